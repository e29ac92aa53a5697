"""The `prefixrl` command line: one subcommand per stage of the pipeline.

    prefixrl select-hard problems=train.jsonl model=/models/base out=hard.jsonl k=512
    prefixrl sample problems=hard.jsonl model=/models/base out_dir=traces rank=0 world_size=8
    prefixrl prefixes problems=hard.jsonl traces=traces tokenizer=/models/base out=pool.jsonl
    prefixrl train --recipe prefixrl_tiny_cpu_1n1c [--out DIR] [key=value ...]
    prefixrl eval problems=heldout.jsonl model=/models/base num_samples=256
    prefixrl launch prefixrl_tiny_cpu_1n2c --executor torchrun [--dryrun] [key=value ...]
    prefixrl convert hf-to-megatron SRC DST --tp 2 --pp 1
    prefixrl convert megatron-to-hf SRC DST
    prefixrl demo --out runs/demo
    prefixrl bench reproduce --preset smoke|small|full [--seeds N] [--out DIR] [--set KEY=VALUE] [--regime-only]

Heavy libraries (megatron, vllm) are imported inside the subcommand that needs them, never at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _convert(args: argparse.Namespace) -> None:
    from megatron_ext import convert

    if args.direction == "hf-to-megatron":
        convert.hf_to_megatron(args.src, args.dst, tp=args.tp, pp=args.pp, overwrite=args.overwrite)
    else:
        convert.megatron_to_hf(args.src, args.dst, overwrite=args.overwrite)
    print(f"converted {args.src} -> {args.dst} ({args.direction})")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert weights between HF safetensors and Megatron dist checkpoints",
        description="Convert weights. hf-to-megatron loads the HF checkpoint at --tp/--pp (that many local "
        "processes, each reading only its slices) and writes a Megatron distributed checkpoint that loads at any "
        "TP/PP. megatron-to-hf writes HF safetensors + config.json. Destinations are written to a temporary "
        "directory and renamed into place, so a failed conversion leaves nothing half-written.",
    )
    p.add_argument("direction", choices=["hf-to-megatron", "megatron-to-hf"])
    p.add_argument("src", help="source checkpoint directory")
    p.add_argument("dst", help="destination directory (must not exist unless --overwrite)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size to load with (hf-to-megatron)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size to load with (hf-to-megatron)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(func=_convert)


def _demo(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from prefixrl.demo import DemoSettings, run_demo

    settings = DemoSettings()
    if args.quick:
        settings = replace(settings, sft_steps=40, hard_pool=16, source_cap=16, rl_steps=3, prompts_per_step=4,
                           eval_samples=2, select_k=2, traces="sourced+oracle")
    summary = run_demo(args.out, s=settings)
    _print_summary(summary, args.out)


def _print_summary(summary: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PrefixRL demo")
    table.add_column("what")
    table.add_column("value")
    pre, unp = summary["reward_prefixed_first_last"], summary["reward_unprefixed_first_last"]
    rows = [
        ("hard problems / solved by rejection sampling", f"{summary['hard_problems']} / {summary['solved_by_sourcing']}"),
        ("pool: prefixed / unprefixed", " / ".join(map(str, summary["pool_prefixed_unprefixed"]))),
        ("SFT loss first -> last", "{:.3f} -> {:.3f}".format(*summary["sft_loss_first_last"])),
        ("reward/prefixed first -> last steps", f"{pre[0]:.3f} -> {pre[1]:.3f}"),
        ("reward/unprefixed first -> last steps", f"{unp[0]:.3f} -> {unp[1]:.3f}"),
    ]
    for split in ("train_hard_solved", "heldout_hard"):
        b, a = summary["before"][split], summary["after"][split]
        for k in sorted(b, key=int):
            rows.append((f"{split} pass@{k} before -> after", f"{b[k]:.3f} -> {a[k]:.3f}"))
    rows += [("max mismatch/token_mult_prob_error", f"{summary['mismatch_max']:.5f}"),
             ("total FLOPs (sourcing included)", f"{summary['flops_total']:.3g}"),
             ("wall time", f"{summary['total_s']:.0f} s")]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    print(f"metrics: {out}/metrics.jsonl  plots: {out}/curves.png  summary: {out}/summary.json")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole PrefixRL pipeline on a tiny model (CPU, about 10 minutes)",
        description="Synthetic task + tokenizer, tiny base model (SFT on Megatron-Core), colocated vLLM engine, "
        "hard-problem selection, rejection sampling, prefix pool, PrefixRL with a weight sync every step, and "
        "unprefixed pass@k before/after. Writes metrics.jsonl, curves.png and summary.json to --out.",
    )
    p.add_argument("--out", default="runs/demo", help="fresh output directory")
    p.add_argument("--quick", action="store_true", help="a seconds-scale smoke version (tests)")
    p.set_defaults(func=_demo)


def _table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("what")
    table.add_column("value")
    for what, value in rows:
        table.add_row(what, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def _bar(desc: str, total: int | None = None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", dynamic_ncols=True)


def _stage_parser(sub: argparse._SubParsersAction, name: str, settings: type, *, help: str, example: str) -> Any:
    from prefixrl.config import describe_fields

    p = sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=f"{settings.__doc__}\n\n  {example}",
                       epilog="settings (key=value):\n" + describe_fields(settings))  # fmt: skip
    p.add_argument("settings", nargs="*", metavar="key=value", help="settings listed below")
    p.set_defaults(settings_cls=settings)
    return p


def _settings(args: argparse.Namespace) -> Any:
    from prefixrl.config import settings_from_args

    return settings_from_args(args.settings_cls, args.settings)


def _sample(args: argparse.Namespace) -> None:
    from prefixrl.stages import run_sample

    s = _settings(args)
    with _bar(f"sampling (rank {s.rank}/{s.world_size})") as bar:
        counts = run_sample(s, progress=bar.update)
    _table(f"prefixrl sample -> {s.out_dir}", list(counts.items()))


def _select_hard(args: argparse.Namespace) -> None:
    from prefixrl.data import ProblemSetConfig, load_problems
    from prefixrl.stages import run_select_hard

    s = _settings(args)
    with _bar(f"pass@{s.k}", total=len(load_problems(ProblemSetConfig(path=s.problems)))) as bar:
        sel = run_select_hard(s, progress=bar.update)
    rows = [(f"pass rate {label}", n) for label, n in sel.histogram.items()]
    _table(f"prefixrl select-hard: pass@{sel.k} histogram", rows)
    _table("prefixrl select-hard", [("problems", len(sel.num_correct)), ("hard (0 of k correct)", len(sel.hard_ids)),
                                     ("written to", s.out)])


def _prefixes(args: argparse.Namespace) -> None:
    from prefixrl.stages import run_prefixes

    s = _settings(args)
    stats = run_prefixes(s)
    mean_cut = sum(stats.cut_fracs) / len(stats.cut_fracs) if stats.cut_fracs else float("nan")
    _table(f"prefixrl prefixes -> {s.out}", [
        ("prefixed / unprefixed prompts", f"{stats.num_prefixed} / {stats.num_unprefixed}"),
        ("problems without a trace", stats.num_problems_without_trace), ("skipped: too long", stats.num_skipped_too_long),
        ("cross-family traces", stats.num_cross_family), ("mean cut fraction", mean_cut)])  # fmt: skip


def _eval(args: argparse.Namespace) -> None:
    from prefixrl.data import ProblemSetConfig, load_problems
    from prefixrl.stages import run_eval

    s = _settings(args)
    n = len(load_problems(ProblemSetConfig(path=s.problems)))
    with _bar("eval", total=min(n, s.num_problems or n)) as bar:
        report = run_eval(s, progress=bar.update)
    _table(f"prefixrl eval: {s.model}", [(f"pass@{k}", v) for k, v in report.pass_at_k.items()])


def _add_stages(sub: argparse._SubParsersAction) -> None:
    from prefixrl import stages

    _stage_parser(sub, "sample", stages.SampleSettings, help="rejection-sample correct traces (resumable, sharded)",
                  example="prefixrl sample problems=hard.jsonl model=/models/base out_dir=traces cap=2500 rank=0 "
                  "world_size=8").set_defaults(func=_sample)
    _stage_parser(sub, "select-hard", stages.SelectHardSettings, help="keep problems with pass@k = 0; histogram",
                  example="prefixrl select-hard problems=train.jsonl model=/models/base out=hard.jsonl k=512"
                  ).set_defaults(func=_select_hard)
    _stage_parser(sub, "prefixes", stages.PrefixesSettings, help="cut traces into the prefixed training pool",
                  example="prefixrl prefixes problems=hard.jsonl traces=traces tokenizer=/models/base out=pool.jsonl"
                  ).set_defaults(func=_prefixes)
    _stage_parser(sub, "eval", stages.EvalSettings, help="unprefixed pass@k of a model on a problem file",
                  example="prefixrl eval problems=heldout.jsonl model=/models/base num_samples=256"
                  ).set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from prefixrl.config import apply_overrides, to_dict
    from prefixrl.train import FINISHED, main as train_main
    from recipes.prefixrl import get_recipe

    overrides = [*args.overrides, *([f"logging.out_dir={args.out}"] if args.out else [])]
    cfg = apply_overrides(get_recipe(args.recipe)(), overrides)
    train_main(to_dict(cfg))
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 reports
    done = Path(cfg.logging.out_dir) / FINISHED
    if not done.exists():
        print(f"prefixrl train: stopped before step {cfg.steps}; rerun the same command to resume from "
              f"{cfg.checkpoint.dir or Path(cfg.logging.out_dir) / 'checkpoints'}")
        return
    summary = json.loads(done.read_text())
    pre, unp = summary["reward_prefixed_first_last"], summary["reward_unprefixed_first_last"]
    _table(f"prefixrl train {cfg.run_name}", [
        ("steps (resumed from)", f"{summary['steps']} ({summary['resumed_from']})"), ("pool size", summary["pool_size"]),
        ("reward/prefixed first -> last", f"{pre[0]:.3f} -> {pre[1]:.3f}"),
        ("reward/unprefixed first -> last", f"{unp[0]:.3f} -> {unp[1]:.3f}"),
        *[(k, v) for k, v in summary["eval_last"].items()],
        ("max mismatch/token_mult_prob_error", summary["mismatch_max"]), ("total FLOPs", summary["flops_total"]),
        ("outputs", f"{cfg.logging.out_dir}/metrics.jsonl, curves.png, tb/, checkpoints/")])  # fmt: skip


def _add_train(sub: argparse._SubParsersAction) -> None:
    from prefixrl.config import TrainConfig, describe

    p = sub.add_parser(
        "train", help="PrefixRL training from a recipe plus dotted overrides", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run PrefixRL: Megatron-Core policy + colocated vLLM engine, in one process or in W torchrun ranks "
        "(one engine with parallel.engine_tensor_parallel=W sharded over the same ranks). The "
        "config is the recipe with dotted key=value overrides applied (a typo fails with the closest key). Outputs "
        "in logging.out_dir: config.json, metrics.jsonl, tb/, checkpoints/, curves.png and `finished`. Rerunning "
        "resumes from the latest checkpoint (checkpoint.resume=auto); SIGUSR1/SIGTERM checkpoint and exit 0; a "
        "finished run directory is refused. With data.problems=None (the tiny recipes) the synthetic task, its "
        "tokenizer, base model and traces are prepared under <out_dir>/synthetic first.\n\n"
        "  prefixrl train --recipe prefixrl_tiny_cpu_1n1c --out runs/tiny steps=10 rollout.n=4\n"
        "  torchrun --nproc-per-node 2 -m prefixrl.cli train --recipe prefixrl_tiny_cpu_1n2c --out runs/tiny2",
        epilog="config keys (defaults; recipes change some):\n" + describe(TrainConfig()))  # fmt: skip
    p.add_argument("--recipe", required=True, help="recipe name (recipes/prefixrl.py), e.g. prefixrl_tiny_cpu_1n1c")
    p.add_argument("--out", help="shorthand for logging.out_dir=DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. rollout.n=16")
    p.set_defaults(func=_train)


def _launch(args: argparse.Namespace) -> None:
    from recipes.launch import launch

    exp_id = launch(args.recipe, executor=args.executor, dryrun=args.dryrun, overrides=args.overrides,
                    wait=not args.detach)  # fmt: skip
    _table("prefixrl launch", [("recipe", args.recipe), ("executor", args.executor), ("experiment", exp_id),
                               ("mode", "dry run (printed, nothing ran)" if args.dryrun else
                                "submitted" if args.detach else "finished")])  # fmt: skip


def _add_launch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch", help="run a recipe through nemo-run (local, torchrun or Slurm)",
        description="Build RECIPE, apply the overrides, and run `prefixrl.train:main` through a nemo-run executor: "
        "local (one process), torchrun (this machine, cluster.gpus_per_node ranks) or slurm (sbatch; set "
        "cluster.account / cluster.partition). --dryrun prints what would run.")  # fmt: skip
    p.add_argument("recipe", help="recipe name (recipes/prefixrl.py)")
    p.add_argument("--executor", choices=["local", "torchrun", "slurm"], required=True)
    p.add_argument("--dryrun", action="store_true", help="print the task and executor, run nothing")
    p.add_argument("--detach", action="store_true", help="return once submitted instead of waiting (slurm)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=_launch)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (the paper's comparison in miniature)")
    bench = p.add_subparsers(dest="bench_command", required=True)
    r = bench.add_parser(
        "reproduce", help="PrefixRL vs the paper's baselines on CPU, compute-matched, reward vs FLOPs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tiny base model levelled off on the synthetic task, a hard level chosen by measurement, rejection "
        "sampling, then prefixrl, prefixed_only, rl, rl_large_n, sft_rl, offpolicy_is, luffy and the more_base control "
        "from the same base at the same FLOPs budget, on the real stack (Megatron-Core + vLLM); --set methods=... "
        "picks some (and the prefixrl_sound diagnostic, only when named). Writes "
        "<out>/report/table.md, results.json and plots; an interrupted run restarted with the same arguments resumes "
        "without redoing finished (method, seed) runs, and a run stopped mid-way continues from its last snapshot "
        "(taken at every evaluation, and at the end of the step on SIGTERM/SIGUSR1, which then exit 0). "
        "docs/reproduction.md has the full run and its analysis.\n\n"
        "  prefixrl bench reproduce --preset smoke --out runs/repro-smoke      # minutes\n"
        "  prefixrl bench reproduce --preset full --out runs/repro              # about 3 h on 2 cores\n"
        "  prefixrl bench reproduce --preset full --out runs/repro --set methods=prefixrl,rl,sft_rl,prefixed_only,"
        "more_base,luffy,offpolicy_is,rl_large_n    # then every method")
    r.add_argument("--preset", required=True,
                   help="smoke, small, full, full-kinds (session 22's trial), full-v19 (sessions 19-20's full) or "
                        "full-v8 (session 8's)")
    r.add_argument("--seeds", type=int, help="seeds per method (default: the preset's)")
    r.add_argument("--out", help="output directory (default runs/repro-<preset>)")
    r.add_argument("--base-from", metavar="DIR",
                   help="reuse the trained base model (and its level probe) of another benchmark directory whose base "
                   "settings match, instead of training one (the longest stage)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a preset field (repeatable), e.g. --set regime.sft_steps=2000 --set "
                   "regime.levels=2,3,4,5,6,7,8,9 --set methods=prefixrl,rl; recorded in <out>/settings.json")
    r.add_argument("--regime-only", action="store_true",
                   help="stop after the regime stage (base, level probe, splits, sourcing) and print its figures")
    r.add_argument("--base-checkpoint", metavar="NAME",
                   help="start every method from this saved base checkpoint (e.g. step-01200; default: the final "
                   "base), chosen from <out>/regime/probe.json when the final base is too strong for a hard level")
    r.set_defaults(func=_bench_reproduce)


def _bench_reproduce(args: argparse.Namespace) -> None:
    from pathlib import Path

    from prefixrl.bench.reproduce import get_preset, run_benchmark
    from prefixrl.settings import apply_overrides

    overrides = args.overrides + ([f"regime.base_checkpoint={args.base_checkpoint}"] if args.base_checkpoint else [])
    settings = apply_overrides(get_preset(args.preset, seeds=args.seeds), overrides)
    out = args.out or f"runs/repro-{args.preset}"
    report = run_benchmark(out, settings, base_from=args.base_from, regime_only=args.regime_only)
    if "stopped" in report:
        print(f"prefixrl bench reproduce: stopped on a signal: {report['stopped']}")
        return
    if not args.regime_only:
        print((Path(out) / "report" / "table.md").read_text())
    reg = report.get("regime", {})
    if reg:
        k = reg["k"]
        print(f"regime: hard = {reg['hard_level_terms']} terms, {reg['answer_space']} answers; base pass@{k} on "
              f"train_hard {reg['base_pass_at_k_train_hard']:.3f}; sourced {reg['sourced_fraction']:.2f} of "
              f"{reg['train_hard']} problems (cap {reg['source_cap']}); success from a 40-80% prefix "
              f"{reg['prefix_success']:.3f}; sound traces {reg.get('sound_trace_fraction', float('nan')):.2f}")
        if "prefix_success_by_trace" in reg:
            by = reg["prefix_success_by_trace"]
            print(f"prefix success from sound traces {by['sound']:.3f} ({by['sound_traces']} prefixes), from "
                  f"unsound ones {by['unsound']:.3f} ({by['unsound_traces']}); sourced trace kinds "
                  f"{reg['sourced_trace_kinds']}")
        if reg.get("difficulty"):
            d = reg["difficulty"]
            print(f"equally hard? first-success rounds vs one geometric law: chi2 {d['chi2']:.1f} on {d['dof']} dof, "
                  f"p = {d['p_value']:.3g}; by multiplying terms {d.get('by_multiplications', '-')}")
    if not args.regime_only:
        print(f"plots: {', '.join(report['plots'])}")


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_stages, _add_train, _add_launch, _add_convert, _add_demo, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefixrl", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"prefixrl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
