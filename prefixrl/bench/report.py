"""The reproduction benchmark's report: table (markdown + JSON) and plots from out/runs/<method>/seed<k>.json.

Per method: final unprefixed pass@1 on train_hard, heldout_hard and heldout_medium (mean +- std over seeds), final
entropy, FLOPs to reach sft_rl's final train_hard accuracy (each seed's own), and the paper's two ratios (the first
per seed, then the mean):

    speedup = FLOPs(sft_rl to its final accuracy) / FLOPs(prefixrl to the same accuracy)     (paper: 2)
    gain    = prefixrl final train_hard pass@1 / rl final train_hard pass@1                   (paper: 3)

FLOPs include the sourcing cost for the methods that use the traces, and every method's budget is PrefixRL's total:
a method without traces spends the sourcing FLOPs on its own training. The same ratio with sourcing left out
(gain_at_rl_flops: rl read off its curve at PrefixRL's RL FLOPs) and every such method's accuracies there are
reported too, so both ways of counting can be compared. With more than one plain RL run (rl, rl_large_n, the
rl_low_lr diagnostic), the gain over each is given too (gain_vs_plain_rl), the paper's being over the strongest.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefixrl.bench.problems import HARD_SPLITS

SPLITS = ("train_hard", "heldout_hard", "heldout_medium")
PLAIN_RL = ("rl", "rl_large_n", "rl_low_lr")
"""The runs of plain on-policy RL (no traces): PrefixRL's final accuracy over each one's is reported, since the
paper's 3x is over plain RL at its best, not over one learning rate or one n."""


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    if not all(math.isfinite(x) for x in xs):  # FLOPs to a target never reached are inf: no spread to give
        return statistics.fmean(xs), math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def load_curves(out: Path, methods: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """method -> its finished seeds' curves, in the order of `methods`."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        runs = [json.loads(p.read_text()) for p in sorted((out / "runs" / method).glob("seed*.json"))]
        if runs:
            curves[method] = runs
    return curves


def value_at(points: list[dict[str, float]], x_key: str, x: float, key: str) -> float:
    """The curve `key` at `x` on the axis `x_key`, interpolated linearly; nan when `x` is outside the curve."""
    import numpy as np

    return float(np.interp(x, [p[x_key] for p in points], [p[key] for p in points], left=math.nan, right=math.nan))


def summarize(curves: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The table's numbers (module docstring)."""
    from prefixrl.bench.reproduce import flops_to_reach

    rows: dict[str, dict[str, Any]] = {}
    for method, runs in curves.items():
        row: dict[str, Any] = {"seeds": len(runs)}
        for split in SPLITS:
            row[split] = _mean_std([r["points"][-1][f"{split}/pass@1"] for r in runs])
            row[f"{split}_start"] = _mean_std([r["points"][0][f"{split}/pass@1"] for r in runs])
        row["entropy_final"] = _mean_std([statistics.fmean([s["entropy"] for s in r["steps"][-5:]])
                                          if r["steps"] else math.nan for r in runs])  # fmt: skip
        row["flops_final"] = _mean_std([r["points"][-1]["flops"] for r in runs])
        row["sourcing_flops"] = runs[0]["sourcing_flops"] if runs[0]["uses_traces"] else 0.0
        row["steps"] = _mean_std([float(r["points"][-1]["step"]) for r in runs])
        rows[method] = row
    report: dict[str, Any] = {"rows": rows}
    budgets_rl = {r["seed"]: r["points"][-1]["flops_rl"] for r in curves.get("prefixrl", [])}
    at_rl = report["at_prefixrl_rl_flops"] = {}
    for method, runs in curves.items():
        if not runs[0]["uses_traces"] and all(r["seed"] in budgets_rl for r in runs):
            at_rl[method] = {split: _mean_std([value_at(r["points"], "flops_rl", budgets_rl[r["seed"]],
                                                        f"{split}/pass@1") for r in runs])
                             for split in SPLITS}  # fmt: skip
    if "sft_rl" in curves:
        # Each seed's target is that seed's sft_rl final (a mean target is out of reach of sft_rl's weaker seeds).
        key = "train_hard/pass@1"
        sft_runs = {r["seed"]: r["points"] for r in curves["sft_rl"]}
        targets = {seed: pts[-1][key] for seed, pts in sft_runs.items()}
        report["target_accuracy"] = rows["sft_rl"]["train_hard"][0]
        to_target = {method: {r["seed"]: flops_to_reach(r["points"], key, targets[r["seed"]])
                              for r in runs if r["seed"] in targets} for method, runs in curves.items()}
        for method, by_seed in to_target.items():
            rows[method]["flops_to_target"] = _mean_std(list(by_seed.values()))
        if "prefixrl" in curves:
            # nan where sft_rl did not improve or PrefixRL starts at the target (the ratio says nothing); 0 where
            # PrefixRL never reaches it (sft / inf).
            ratios = [to_target["sft_rl"][seed] / pre
                      if targets[seed] > sft_runs[seed][0][key] and pre > 0 else math.nan
                      for seed, pre in to_target["prefixrl"].items()]  # fmt: skip
            report["speedup_vs_sft_rl_by_seed"] = ratios
            report["speedup_vs_sft_rl"] = _mean_std(ratios)[0]
    report["line_failure"] = {m: {"start": pooled_line_failure([r["points"][0] for r in runs]),
                                  "final": pooled_line_failure([r["points"][-1] for r in runs])}
                              for m, runs in curves.items()}  # fmt: skip
    plain = [m for m in PLAIN_RL if m in rows]
    if "prefixrl" in rows and plain:  # the paper's first ratio is against plain RL at its best
        pre = rows["prefixrl"]["train_hard"][0]
        gains = report["gain_vs_plain_rl"] = {
            m: {"sourcing_charged": _ratio(pre, rows[m]["train_hard"][0]),
                "sourcing_not_charged": _ratio(pre, at_rl[m]["train_hard"][0]) if m in at_rl else math.nan}
            for m in plain}  # fmt: skip
        if "rl" in gains:  # the issue's ratio: plain RL with n samples at the shared settings
            report["gain_vs_rl"] = gains["rl"]["sourcing_charged"]
            if "rl" in at_rl:
                report["gain_at_rl_flops"] = gains["rl"]["sourcing_not_charged"]
            report["prefixrl_vs_rl_by_step"] = along_the_way(curves["prefixrl"], curves["rl"])
    return report


def pooled_line_failure(points: list[dict[str, Any]], key: str = "train_hard/line_failure") -> list[list[float]]:
    """[[line, chains reaching it, share failing there], ...] pooled over evaluation points (one per seed): the
    chains and failures of each line are summed, then divided. Points from runs made before the figure was recorded
    have none: [] when no point has it."""
    reached: dict[int, int] = {}
    failed: dict[int, float] = {}
    for p in points:
        for line, n, rate in p.get(key, []):
            reached[line] = reached.get(line, 0) + n
            failed[line] = failed.get(line, 0.0) + rate * n
    return [[line, reached[line], failed[line] / reached[line]] for line in sorted(reached)]


def along_the_way(prefixrl: list[dict[str, Any]], rl: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each of PrefixRL's evaluations: its train_hard pass@1 and plain RL's, read off rl's curve of the same seed
    at the same RL FLOPs (sourcing not charged) and at the same total FLOPs (sourcing charged), and the ratios
    prefixrl / rl; each figure mean +- std over the seeds that both methods finished (nan past rl's curve). The
    ratios are of the means over the seeds where rl has a value (`_ratio_of_means`): a mean of per-seed ratios blows
    up where one seed's rl is a sliver above 0 (session 18: 5,331 +- 7,537)."""
    rl_by_seed = {r["seed"]: r["points"] for r in rl}
    pairs = [(r["points"], rl_by_seed[r["seed"]]) for r in prefixrl if r["seed"] in rl_by_seed]
    key = "train_hard/pass@1"
    rows = []
    for i in range(min((len(pre) for pre, _ in pairs), default=0)):
        at = [(pre[i][key], value_at(base, "flops_rl", pre[i]["flops_rl"], key),
               value_at(base, "flops", pre[i]["flops"], key)) for pre, base in pairs]
        rows.append({"step": pairs[0][0][i]["step"], "flops_rl": _mean_std([pre[i]["flops_rl"] for pre, _ in pairs]),
                     "flops": _mean_std([pre[i]["flops"] for pre, _ in pairs]),
                     "prefixrl": _mean_std([a for a, _, _ in at]),
                     "rl_at_rl_flops": _mean_std([b for _, b, _ in at]),
                     "ratio_at_rl_flops": _ratio_of_means([(a, b) for a, b, _ in at]),
                     "rl_at_flops": _mean_std([c for _, _, c in at]),
                     "ratio_at_flops": _ratio_of_means([(a, c) for a, _, c in at])})
    return rows


def _ratio(a: float, b: float) -> float:
    """a / b; inf for a > 0 over 0, nan for 0 / 0 and where b is nan (e.g. past the end of rl's curve)."""
    if math.isnan(b):
        return math.nan
    return a / b if b > 0 else (math.inf if a > 0 else math.nan)


def _ratio_of_means(pairs: list[tuple[float, float]]) -> float:
    """mean(a) / mean(b) over the pairs whose b is a number (nan when there are none)."""
    kept = [(a, b) for a, b in pairs if not math.isnan(b)]
    if not kept:
        return math.nan
    return _ratio(statistics.fmean(a for a, _ in kept), statistics.fmean(b for _, b in kept))


def _fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 3) -> str:
    """mean +- std; "-" for nan, "never" for inf (FLOPs to a target never reached)."""
    m, s = ms
    if math.isnan(m):
        return "-"
    if math.isinf(m):
        return "never"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _fmt_ratio(x: float) -> str:
    return "-" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2f}")


def table_markdown(report: dict[str, Any]) -> str:
    head = ("| method | seeds | train_hard pass@1 (start -> final) | heldout_hard pass@1 | heldout_medium pass@1 | "
            "entropy (last 5 steps) | steps | FLOPs at end (1e12) | FLOPs to sft_rl's final (1e12) |")
    lines = [head, "|" + "---|" * 9]
    for method, r in report["rows"].items():
        lines.append(
            f"| {method} | {r['seeds']} | {_fmt(r['train_hard_start'])} -> {_fmt(r['train_hard'])} | "
            f"{_fmt(r['heldout_hard'])} | {_fmt(r['heldout_medium'])} | {_fmt(r['entropy_final'])} | "
            f"{_fmt(r['steps'], digits=0)} | {_fmt(r['flops_final'], 1e-12, 2)} | "
            f"{_fmt(r.get('flops_to_target', (math.nan, math.nan)), 1e-12, 2)} |")  # fmt: skip
    lines.append("")
    if "target_accuracy" in report:
        lines.append(f"sft_rl final train_hard pass@1 (the target; each seed's own, mean): "
                     f"{report['target_accuracy']:.3f}")
    if "speedup_vs_sft_rl" in report:
        by_seed = ", ".join(f"{x:.2f}" for x in report.get("speedup_vs_sft_rl_by_seed", []))
        lines.append(f"FLOPs ratio sft_rl / prefixrl to reach it (paper: 2): {report['speedup_vs_sft_rl']:.2f} "
                     f"(per seed: {by_seed}; 0 where prefixrl never reached it)")
    if "gain_vs_rl" in report:
        lines.append(f"final train_hard pass@1 prefixrl / rl at equal FLOPs, sourcing charged (paper: 3): "
                     f"{report['gain_vs_rl']:.2f}")
    if "gain_at_rl_flops" in report:
        lines.append(f"the same with sourcing not charged (rl at prefixrl's RL FLOPs): "
                     f"{report['gain_at_rl_flops']:.2f}")
    if len(report.get("gain_vs_plain_rl", {})) > 1:
        gains = ", ".join(f"{m} {g['sourcing_charged']:.2f} ({g['sourcing_not_charged']:.2f})"
                          for m, g in report["gain_vs_plain_rl"].items())  # fmt: skip
        lines.append(f"final train_hard pass@1 prefixrl / each plain RL run, sourcing charged (not charged): {gains}")
    if report.get("at_prefixrl_rl_flops"):
        lines += ["", "Methods without traces at prefixrl's RL FLOPs (sourcing not charged), read off their curves:",
                  "",
                  "| method | train_hard pass@1 | heldout_hard pass@1 | heldout_medium pass@1 |", "|---|---|---|---|"]
        lines += [f"| {m} | {' | '.join(_fmt(v[split]) for split in SPLITS)} |"
                  for m, v in report["at_prefixrl_rl_flops"].items()]  # fmt: skip
    lines += line_failure_markdown(report.get("line_failure", {}))
    if report.get("prefixrl_vs_rl_by_step"):
        lines += ["", "train_hard pass@1 along the way: prefixrl at its evaluations, rl of the same seed read off its "
                  "curve at the same RL FLOPs (sourcing not charged) and at the same total FLOPs (sourcing charged; "
                  "- past the end of rl's run); ratios of the means over seeds:",
                  "", "| prefixrl step | RL FLOPs (1e12) | prefixrl | rl, same RL FLOPs | ratio | total FLOPs (1e12) "
                  "| rl, same total FLOPs | ratio |", "|" + "---|" * 8]
        lines += [f"| {r['step']} | {_fmt(r['flops_rl'], 1e-12, 2)} | {_fmt(r['prefixrl'])} | "
                  f"{_fmt(r['rl_at_rl_flops'])} | {_fmt_ratio(r['ratio_at_rl_flops'])} | "
                  f"{_fmt(r['flops'], 1e-12, 2)} | {_fmt(r['rl_at_flops'])} | {_fmt_ratio(r['ratio_at_flops'])} |"
                  for r in report["prefixrl_vs_rl_by_step"]]  # fmt: skip
    return "\n".join(lines) + "\n"


def line_failure_markdown(by_method: dict[str, dict[str, list[list[float]]]], *, min_chains: int = 20) -> list[str]:
    """Lines of the table of where each method's unprefixed train_hard chains first fail, at its start and at its
    end (seeds pooled): a line's share of the chains reaching it that fail there (chains), for lines that at least
    `min_chains` chains reach; a start row equal to one already shown (the same base) is not repeated. [] when no
    run recorded it."""
    if not any(v["final"] for v in by_method.values()):
        return []
    last = max(int(row[0]) for v in by_method.values() for rows in v.values() for row in rows)
    lines = ["", "Where the unprefixed train_hard chains first fail: per worked line, the share of the chains "
             f"reaching it that fail there (chains; seeds pooled; lines reached by fewer than {min_chains} chains "
             "left out; a start row that repeats one above, the same base, is not shown again):",
             "", "| method | when | " + " | ".join(f"L{i}" for i in range(last + 1)) + " |",
             "|---|---|" + "---|" * (last + 1)]
    starts: list[Any] = []  # every method starts from the same base and evaluation seeds: one start row says it
    for method, v in by_method.items():
        rows = [("final", v["final"])]
        if v["start"] not in starts:
            starts.append(v["start"])
            rows.insert(0, ("start", v["start"]))
        for when, fails in rows:
            cells = {int(line): f"{rate:.2f} ({n:,})" for line, n, rate in fails if n >= min_chains}
            if cells:
                lines.append(f"| {method} | {when} | "
                             + " | ".join(cells.get(i, "-") for i in range(last + 1)) + " |")
    return lines


REGIME_TARGETS = {"base_pass_at_k_train_hard": ("<=", 0.05), "sourced_fraction": (">=", 0.70),
                  "prefix_success": (">=", 0.10)}
"""The issue's three regime figures and their targets (pass@k at most ~2-5 %, >= 70 % sourced, >= 10 % from a
40-80 % prefix)."""


def regime_markdown(regime: dict[str, Any]) -> str:
    """The regime figures against their targets, and the level probe of every base checkpoint (is it flat?)."""
    if not regime:
        return ""
    lines = ["| regime figure | target | measured | met |", "|---|---|---|---|"]
    for key, (op, target) in REGIME_TARGETS.items():
        got = regime[key]
        met = got <= target if op == "<=" else got >= target
        lines.append(f"| {key} | {op} {target:.2f} | {got:.3f} | {'yes' if met else 'NO'} |")
    hard = regime.get("hard_filter")
    if hard:
        lines.append(f"| hard problems: base fails all {hard['k']} samples (the paper's pass@512 = 0 rule; "
                     f"`hard_filter`): kept of checked | - | "
                     + ", ".join(f"{k} {hard[k]['kept']} of {hard[k]['checked']}" for k in HARD_SPLITS)
                     + f"; {hard['samples']:,} samples, {hard['flops']:.3g} FLOPs (charged to no method) | - |")
    errs = regime.get("base_first_errors")
    if errs and errs["wrong_samples"]:
        lines.append(f"| the base's wrong train_hard samples ({errs['wrong_samples']:,}): first error by kind "
                     f"(`first_error`) | - | {', '.join(f'{k} {v:.2f}' for k, v in errs['by_kind'].items())} | - |")
        lines.append("| ... most common first errors (kind, worked line, share) | - | "
                     f"{', '.join(f'{k} L{line} {v:.2f}' for k, line, v in errs['top'][:3])} | - |")
        by_kind = errs.get("line_right_by_slip_kind")
        if by_kind:
            lines.append("| ... per worked line reached from a right total: right on the kinds the teacher slips on, "
                         "on the others (`kind_hazards`; lines) | - | "
                         + ", ".join(f"{right / max(1, n):.2f} ({n:,})" for right, n in by_kind.values()) + " | - |")
        hazard = [f"L{line} {rate:.2f} ({reached:,})" for line, reached, rate in errs.get("line_failure", [])
                  if reached >= 20]
        if hazard:
            lines.append("| ... per worked line: share of the chains reaching it that first fail there (chains) "
                         f"| - | {', '.join(hazard)} | - |")
    floor = regime.get("chance")
    if floor:
        lines.append(f"| a uniformly random answer ({regime['answer_space']:,} possible): pass@k, sourced at the cap "
                     f"(`difficulty.chance_floor`) | - | {floor['pass_at_k']:.4f}, "
                     f"{floor['sourced_fraction']:.3f} | - |")
    teacher = regime.get("teacher_pass_at_1")
    if teacher:
        hard, medium = str(regime["hard_level_terms"]), str(regime.get("medium_level_terms"))
        by_level = ", ".join(f"{k} terms {v:.3f}" for k, v in teacher.items())
        lines.append(f"| the base's SFT teacher (`teacher_accuracy`): pass@1 by number of terms, the base's ceiling "
                     f"| - | {by_level} | - |")
        for split, level, name in (("train_hard", hard, "hard"), ("heldout_medium", medium, "medium")):
            base = regime["base_pass_at_1"].get(split)
            if base is None or not teacher.get(level):
                continue
            biased = (f"; biased low: the split keeps problems the base fails {regime['hard_filter']['k']} times"
                      if split == "train_hard" and regime.get("hard_filter") else "")
            lines.append(f"| ... the base's {split} pass@1 / the teacher's at the {name} level ({level} terms{biased}; "
                         f"far below 1: the base may still be learning, see more_base) | - | "
                         f"{base / teacher[level]:.3f} | - |")
    slips = regime.get("slip_lines")
    if slips:
        hard = slips["splits"]["train_hard"]
        lines.append(f"| the teacher slips on {hard['kind_share']:.0%} of the line kinds (`slip_kind_fraction`): such "
                     f"lines per train_hard problem, mean (min-max) | - | {hard['mean']:.2f} ({hard['min']}-"
                     f"{hard['max']}) | - |")
        lines.append("| ... train_hard sourced by that count: solved / problems | - | "
                     + ", ".join(f"{n}: {a} / {b}" for n, (a, b) in slips["train_hard_sourced_by_count"].items())
                     + " | - |")
    if "sound_trace_fraction" in regime:
        lines.append(f"| sound_trace_fraction (sourced traces whose every step is right) | - | "
                     f"{regime['sound_trace_fraction']:.3f} | - |")
    by_trace = regime.get("prefix_success_by_trace")
    if by_trace:
        for kind in ("sound", "unsound"):
            lines.append(f"| prefix_success from {kind} traces ({by_trace[f'{kind}_traces']} prefixes) | - | "
                         f"{by_trace[kind]:.3f} | - |")
    kinds = regime.get("sourced_trace_kinds")
    if kinds:
        lines.append(f"| sourced traces: {', '.join(kinds)} (`trace_kind`) | - | "
                     f"{' / '.join(str(n) for n in kinds.values())} | - |")
    diff = regime.get("difficulty", {})
    if diff is None:
        lines.append("| equally hard? (`difficulty.geometric_fit`) | - | not measured: the sourcing cap is one round "
                     "| - |")
    elif diff:
        lines.append(f"| equally hard? first-success rounds vs one geometric law (`difficulty.geometric_fit`) | - | "
                     f"chi2 {diff['chi2']:.1f} on {diff['dof']} dof, p = {diff['p_value']:.3g} | - |")
        for g, row in diff.get("by_multiplications", {}).items():
            lines.append(f"| problems with {g} multiplying terms ({row['problems']}): sourced, success per sample | "
                         f"- | {row['sourced']:.3f}, {row['p_per_sample']:.4f} | - |")
    lines.append(f"\nbase: {regime.get('base_checkpoint', 'base')}, hard level: {regime['hard_level_terms']} terms, "
                 f"medium level: {regime['medium_level_terms']} terms, source cap {regime['source_cap']}, "
                 f"k = {regime['k']}, sampling temperature {regime.get('temperature', 1.0)}\n")
    curve = regime.get("probe", {}).get("curve", {})
    if curve:
        levels = list(next(iter(curve.values())))
        lines += [f"| base checkpoint | {' | '.join(f'pass@k L{lv}' for lv in levels)} |",
                  "|---|" + "---|" * len(levels)]
        lines += [f"| {name} | {' | '.join(f'{c[lv]:.3f}' for lv in levels)} |" for name, c in curve.items()]
    confirm = regime.get("probe", {}).get("confirm")
    if confirm:
        where = regime["probe"]["confirm_for"]
        lines.append(f"\nhard level confirmed at {where['checkpoint']} on {where['problems']} fresh problems per "
                     "level: " + ", ".join(f"L{lv} pass@k {v:.3f}" for lv, v in confirm.items()))
    return "\n".join(lines) + "\n"


def wall_times(curves: dict[str, list[dict[str, Any]]], regime: dict[str, Any]) -> dict[str, Any]:
    """Seconds each stage took on this machine: {"regime": {stage: s}, "methods": {method: [s per seed]}, "total":
    s}. The regime stages are base (SFT), probe, hard_filter (when set), base_eval, sourcing and prefix_probe; a
    stage read back from another directory (`--base-from`) counts what it took there, and one written before stage
    times were recorded is missing (so is its share of the total)."""
    stages = {"base": regime.get("base", {}).get("wall_s"), "probe": regime.get("probe", {}).get("wall_s"),
              "hard_filter": (regime.get("hard_filter") or {}).get("wall_s"), **regime.get("wall_s", {})}  # fmt: skip
    stages = {k: float(v) for k, v in stages.items() if v is not None}
    methods = {m: [float(r["wall_s"]) for r in runs if "wall_s" in r] for m, runs in curves.items()}
    return {"regime": stages, "methods": methods,
            "total": sum(stages.values()) + sum(sum(v) for v in methods.values())}


def wall_markdown(wall: dict[str, Any]) -> str:
    """The wall-time table (minutes): regime stages, then per method the mean per seed and the sum over seeds."""
    lines = ["| stage | minutes per seed | minutes in all |", "|---|---|---|"]
    lines += [f"| regime: {k} | - | {v / 60:.1f} |" for k, v in wall["regime"].items()]
    for m, secs in wall["methods"].items():
        if secs:
            per = _mean_std([x / 60 for x in secs])
            seeds = f"{len(secs)} seed{'s' if len(secs) > 1 else ''}"
            lines.append(f"| {m} ({seeds}) | {_fmt(per, digits=1)} | {sum(secs) / 60:.1f} |")
    lines.append(f"| **total** | | **{wall['total'] / 60:.1f}** |")
    return "\n".join(lines) + "\n"


def _band(runs: list[dict[str, Any]], series: str, key: str) -> tuple[Any, Any, Any]:
    import numpy as np

    xs = [np.array([p["flops"] for p in r[series]]) for r in runs]
    ys = [np.array([p[key] for p in r[series]], dtype=float) for r in runs]
    hi = min(x[-1] for x in xs)
    lo = max(x[0] for x in xs)
    grid = np.linspace(lo, hi, 50) if hi > lo else xs[0]
    stack = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])
    return grid, stack.mean(0), stack.std(0)


def write_plots(out: Path, curves: dict[str, list[dict[str, Any]]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, split in zip(axes, SPLITS):
        for method, runs in curves.items():
            x, m, sd = _band(runs, "points", f"{split}/pass@1")
            ax.plot(x, m, label=method)
            ax.fill_between(x, m - sd, m + sd, alpha=0.2)
        ax.set(title=f"{split}: unprefixed pass@1", xlabel="FLOPs (sourcing charged to trace methods)",
               ylabel="pass@1")  # fmt: skip
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "reward_vs_flops.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in curves.items():
        runs = [r for r in runs if r["steps"]]
        if runs:
            x, m, sd = _band(runs, "steps", "entropy")
            ax.plot(x, m, label=method)
            ax.fill_between(x, m - sd, m + sd, alpha=0.2)
    ax.set(title="policy entropy of trained tokens", xlabel="FLOPs", ylabel="entropy (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "entropy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(out: Path, s: Any) -> dict[str, Any]:
    """out/report/{table.md, results.json, reward_vs_flops.png, entropy.png}; returns the report."""
    curves = load_curves(out, s.methods)
    report = summarize(curves)
    regime_path = out / "regime" / "regime.json"
    report["regime"] = json.loads(regime_path.read_text()) if regime_path.exists() else {}
    rep_dir = out / "report"
    rep_dir.mkdir(parents=True, exist_ok=True)
    report["wall_s"] = wall_times(curves, report["regime"])
    (rep_dir / "table.md").write_text(table_markdown(report) + "\n" + regime_markdown(report["regime"]) + "\n"
                                      + "Wall time on this machine:\n\n" + wall_markdown(report["wall_s"]))
    (rep_dir / "results.json").write_text(json.dumps(report, indent=1, default=str))
    report["plots"] = [str(p) for p in write_plots(rep_dir, curves)]
    return report
