"""`prefixrl bench reproduce --preset smoke|full [--seeds N] [--out DIR]`: the paper's comparison in miniature.

    out/regime/                 base model, tokenizer, splits' figures (regime.json), sourced traces
    out/runs/<method>/seed<k>.json   one finished (method, seed) curve each; existing ones are not redone
    out/report/                 table.md, results.json, reward_vs_flops.png, entropy.png

Stages: the hard regime (`prefixrl.bench.regime`), then for each seed PrefixRL first (its FLOPs, sourcing
included, are the budget of every other method of that seed: methods without traces spend the sourcing FLOPs on
training), then the other methods (`prefixrl.bench.methods`), then the
report. An interrupted benchmark started again with the same arguments resumes: finished stages and runs are read
back, unfinished ones start over. One process: Megatron TP=1 and the colocated in-process vLLM engine.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from prefixrl.bench.methods import CORE_METHODS, DIAGNOSTICS, METHODS, RUNS, RLSettings, RunStopped, snapshot_dir
from prefixrl.bench.regime import RegimeSettings

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class BenchSettings:
    """One preset: the regime, the shared RL settings, the methods and the number of seeds."""

    regime: RegimeSettings = field(default_factory=RegimeSettings)
    """Task, base model, sourcing."""
    rl: RLSettings = field(default_factory=RLSettings)
    """What every method shares."""
    methods: tuple[str, ...] = tuple(METHODS)
    """Methods to run (prefixrl first: it sets the budget); diagnostics (methods.DIAGNOSTICS) only when named."""
    seeds: int = 3
    """Seeds per method (mean +- std in the table)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in RUNS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)} (diagnostics: "
                             f"{list(DIAGNOSTICS)})")
        if not self.methods or self.methods[0] != "prefixrl":
            raise ValueError(f"methods={self.methods}: prefixrl must come first (its FLOPs are every method's budget)")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} must be >= 1")


_RL_12_STEPS = replace(RLSettings(), prefixrl_steps=12, eval_every=6, lr=1e-4, gen_tokens=128, max_steps_factor=8.0)
_REGIME = replace(RegimeSettings(), levels=(2, 3, 4, 5, 6), slip_rate=0.4, clean_steps=800, sft_steps=1400,
                  checkpoints=3, gen_tokens=128)
_FOUR_DIGIT = replace(RegimeSettings(), levels=(2, 3, 4, 5, 6, 7, 8), multiply_prob=0.3, width=4,
                      first_term_max=9999, max_answer=9999, slip_rate=0.2, clean_steps=1200, sft_steps=2400,
                      checkpoints=4, gen_tokens=160, confirm_problems=256, temperature=0.9, hard_filter_k=64,
                      source_cap=1024)
_SLIP_05 = replace(_FOUR_DIGIT, slip_rate=0.5, sft_steps=4800, checkpoints=8)
_KINDS = replace(_SLIP_05, slip_rate=0.5, slip_kind_fraction=0.5, sft_steps=3600, checkpoints=6, hard_filter_pool=4)
_RL_60_STEPS = replace(RLSettings(), prefixrl_steps=60, eval_every=12, lr=1e-4, gen_tokens=160, max_steps_factor=3.0)

PRESETS: dict[str, BenchSettings] = {
    "full": BenchSettings(regime=_SLIP_05, rl=_RL_60_STEPS, methods=CORE_METHODS),
    "full-kinds": BenchSettings(regime=_KINDS, rl=_RL_60_STEPS, methods=CORE_METHODS),
    "full-v19": BenchSettings(regime=_FOUR_DIGIT, rl=_RL_60_STEPS, methods=CORE_METHODS),
    "full-v8": BenchSettings(regime=replace(_REGIME, source_cap=512),
                             rl=replace(_RL_12_STEPS, max_steps_factor=10.0)),
    "small": BenchSettings(
        regime=replace(_REGIME, train_hard=128, heldout_hard=64, heldout_medium=64, source_cap=512,
                       prefix_probe_problems=32),
        rl=_RL_12_STEPS,
        seeds=1,
    ),
    "smoke": BenchSettings(
        # 21 possible answers: even a barely trained base hits some by chance, so sourcing always finds traces.
        regime=RegimeSettings(levels=(3, 4), per_level=150, orders_per_problem=2, sft_steps=60, sft_batch=32,
                              first_term_max=None, max_operand=9, max_answer=20, slip_rate=0.3,
                              clean_steps=30,
                              checkpoints=1, probe_problems=8, confirm_problems=8, target_pass_at_k=0.5,
                              medium_pass_at_k=0.5,
                              train_hard=16, heldout_hard=8, heldout_medium=8, source_cap=32,
                              prefix_probe_problems=8, gen_tokens=96),
        rl=RLSettings(prefixrl_steps=2, max_steps_factor=2.0, prompts_per_step=4, n=4, large_n=8, sft_epochs=1,
                      sft_batch=16, gen_tokens=96, eval_every=2, eval_samples=2, eval_problems=8),
        seeds=1,
    ),
}  # fmt: skip
"""Preset name -> settings (docs/reproduction.md has each one's measured figures and wall time).
full (session 21): full-v19 with a base levelled off by construction: its teacher slips on half its lines after the
1,200 clean steps, and the base learns from it for 4,800 steps in all (one cosine schedule, about 54 min; 8
checkpoints). The more_base control stays flat on it (train_hard 0.000 -> 0.000 for the same FLOPs, session 21), which
session 19's base did not. Measured (session 21): hard level 5 terms, base pass@8 0.4 %, 83 % sourced, prefix success
5.3 % (target 10 %); regime stage 76 min, then CORE_METHODS about 35 min a seed (prefixrl 4, rl 12, sft_rl 5,
prefixed_only 5, luffy and offpolicy_is about 9 together), so about 3 h; more_base 22 min a seed, rl_low_lr 18, run
afterwards with `--set methods=...` (finished runs are kept).
full-kinds (session 22, a trial): full's regime with problem-specific errors: the teacher slips (at 0.5) only on
lines of half the kinds (a term's label and step, `RegimeSettings.slip_kind_fraction`), so a problem is as hard as
its own lines; 3,600 base steps, 6 checkpoints, 4 filter candidates per hard problem. Measured (session 22, regime
stage only, stopped in the sourcing): base 66 min, hard level 6 terms, base pass@8 0.4 %, sourcing on course for
about 55 %; the base is right on 26-39 % of the lines its teacher never slips on (7-10 % of the others) and its
right answers are last-line resyncs, so this regime does not yet do what it is for (docs/reproduction.md).
full-v19: the regime of sessions 17-18 in one run (sessions 19-20's `full`; its base is not session 17's three-stage
one: a 6-term hard level and lookup errors, docs/reproduction.md). Chains of 2-8 terms that add or multiply, four-digit
totals (10,000 answers); the base learns 1,200 steps of clean chains, then 1,200 of a teacher that slips on 20 % of its
lines (one cosine schedule, about 26 min); the hard level is the confirmed one at temperature 0.9, and its problems are
those the base fails in 64 samples (the paper's rule, `hard_filter_k`); sourcing cap 1,024; 60 PrefixRL steps, plain
RL capped at 3x its steps. The issue's sizes (256 hard problems, 128 + 128 held out, 3 seeds). Measured (sessions
19-20): regime stage 48 min, then CORE_METHODS about 35 min a seed. Its base had not levelled off (more_base beats
every RL method, session 20).
full-v8: session 8's full preset (chains of 2-6 terms that add, 1,000 answers, cap 512, 12 PrefixRL steps, every
method); the commands of sessions 8-18 in docs/reproduction.md start from it. small: full-v8's base with 128 hard
problems, one seed by default (docs/reproduction.md reports `--seeds 3`: 32-38 min per seed), so `--base-from` a
small run skips the base in full-v8; smoke: the same pipeline in minutes (the e2e test), numbers meaningless."""


def get_preset(name: str, *, seeds: int | None = None) -> BenchSettings:
    """The preset called `name` (ValueError listing them otherwise), with `seeds` replaced when given."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    s = PRESETS[name]
    return replace(s, seeds=seeds) if seeds is not None else s


# ------------------------------------------------------------------------------------------------ the run
def run_benchmark(out_dir: str | Path, s: BenchSettings, *, base_from: str | Path | None = None,
                  regime_only: bool = False) -> dict[str, Any]:
    """All stages (module docstring); returns the report. `base_from`: another benchmark directory whose finished
    base stage (same base settings) is copied instead of training one (`regime.adopt_base`). `regime_only`: stop
    after the regime stage (base, probe, splits, sourcing, figures) and return {"regime": its figures}. On SIGTERM
    or SIGUSR1 during the methods, the running one snapshots at the end of its step and {"stopped": why} is returned
    (no report); the next start resumes it. Needs nothing initialised (it initialises Megatron)."""
    from megatron_ext import runtime

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings_file(out, s)
    if base_from is not None:
        from prefixrl.bench.regime import adopt_base

        src = Path(base_from)
        if not (src / "settings.json").exists():
            raise FileNotFoundError(f"--base-from {src}: no settings.json there; give a benchmark's --out directory")
        src_settings = _with_new_defaults(json.loads((src / "settings.json").read_text()), asdict(BenchSettings()))
        copied = adopt_base(src / "regime", out / "regime", s.regime, src_settings["regime"])
        logger.info("bench: base stage from %s: %s", src, copied or "kept (this directory has a base)")
    t0 = time.perf_counter()
    runtime.initialize(seed=s.regime.seed)
    engine = None
    try:
        reg, engine = _regime(out, s)
        if regime_only:
            return {"regime": reg.figures}
        from prefixrl.train import StopRequest

        ctx = _context(reg, engine, s)
        with StopRequest() as stop:  # SIGTERM / SIGUSR1: the running method snapshots at the end of its step
            ctx.should_stop = stop
            try:
                run_methods(out, s, ctx)
            except RunStopped as e:
                logger.warning("bench: %s", e)
                return {"stopped": str(e)}
    finally:
        if engine is not None:
            engine.shutdown()
        runtime.shutdown()
    from prefixrl.bench.report import write_report

    report = write_report(out, s)
    report["wall_s_this_start"] = time.perf_counter() - t0
    return report


def run_methods(out: Path, s: BenchSettings, ctx: Any) -> None:
    """Every (seed, method) not finished yet -> out/runs/<method>/seed<k>.json; finished ones are read back. Each
    seed's budget is its own PrefixRL run's total, so PrefixRL starts every seed without one (and evaluates every
    eval_every steps, not at another seed's FLOPs points)."""
    ctx.snapshots = out / "runs"
    for seed in range(s.seeds):
        ctx.budget = ctx.budget_rl = 0.0
        for name in s.methods:
            path = out / "runs" / name / f"seed{seed}.json"
            if path.exists():
                curve = json.loads(path.read_text())
            else:
                logger.info("bench: %s seed %d", name, seed)
                curve = RUNS[name](ctx, seed).to_dict()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(curve))
                tmp.replace(path)
                shutil.rmtree(snapshot_dir(ctx.snapshots, name, seed), ignore_errors=True)
            if name == "prefixrl":
                ctx.budget, ctx.budget_rl = curve["points"][-1]["flops"], curve["points"][-1]["flops_rl"]


def _check_settings_file(out: Path, s: BenchSettings) -> None:
    """A directory belongs to one regime and one set of RL settings; refuse to mix two. Seeds may grow and the
    methods may change: a (method, seed) run depends only on those settings and on its seed's PrefixRL run, so a
    method added later runs against the same budgets and the finished runs are kept (the report lists the methods
    named this time). Until a method has finished a run, the RL settings may change too: a directory that holds
    only a regime stage (e.g. from --regime-only) takes the methods with any RL settings; a run's snapshot (a
    method stopped mid-way) counts as started."""
    path = out / "settings.json"
    new = asdict(s)
    if path.exists():
        old = _with_new_defaults(json.loads(path.read_text()), json.loads(json.dumps(asdict(BenchSettings()))))
        started = any((out / "runs").glob("*/seed*.json")) or any((out / "runs").glob("*/seed*.snapshot"))
        free = ("seeds", "methods") if started else ("seeds", "methods", "rl")
        if {k: v for k, v in old.items() if k not in free} != json.loads(json.dumps({k: v for k, v in new.items()
                                                                                       if k not in free})):
            raise FileExistsError(f"{out} holds a benchmark with other settings ({path}); choose a new --out")
    path.write_text(json.dumps(new, indent=1))


def _with_new_defaults(old: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`old` settings with the fields added since it was written filled in from `defaults` (nested): a directory
    written before a field existed ran with that field's default, so it still resumes unless the field is set."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_new_defaults(out[k], v)
    return out


def _regime(out: Path, s: BenchSettings) -> tuple[Any, Any]:
    """The regime stage (built or read back) and the engine on the base."""
    from prefixrl.bench.regime import build_regime
    from prefixrl.pipeline import SYNTHETIC_MAX_LEN, build_engine

    def engine_factory(model_dir: Path) -> Any:
        return build_engine(model_dir, max_model_len=SYNTHETIC_MAX_LEN, seed=s.regime.seed)

    return build_regime(out / "regime", s.regime, engine_factory=engine_factory)


EARLY_CUTS = (0.1, 0.4)
"""Where the prefixrl_early diagnostic cuts the traces (fractions of their tokens): it leaves the later lines to the
policy, as the paper's [0.4, 0.8] does, but also most of the early ones, which every unprefixed chain must get through
(session 18: PrefixRL's unprefixed accuracy levelled off while its reward on prefixed prompts kept rising)."""


def trace_pools(train: Sequence[Any], traces: Mapping[str, Any], s: BenchSettings, *, format_prompt: Any,
                tokenizer: Any) -> dict[str, list[Any]]:
    """The methods' training pools over the hard problems `train` (methods.Context.pools): "prefixrl" (3 cuts in
    [0.4, 0.8] of each problem's trace + 1 unprefixed copy), "prefixed_only" (the cuts alone), "unprefixed" (every
    problem, traced or not), "prefixrl_sound" (as "prefixrl", over the problems whose trace is a sound chain) and
    "prefixrl_early" (as "prefixrl", 3 cuts in EARLY_CUTS)."""
    from prefixrl import prefixes
    from prefixrl.pipeline import SYNTHETIC_MAX_LEN, tokenizer_name
    from prefixrl.records import PrefixedProblem
    from prefixrl.tasks.arith import chain_is_sound

    by_id = {p.problem_id: p for p in train}
    sound = [t for t in traces.values() if chain_is_sound(by_id[t.problem_id], t.text)]

    paper = prefixes.CutConfig(seed=s.regime.seed)  # 3 cuts in [0.4, 0.8]
    early = replace(paper, low=EARLY_CUTS[0], high=EARLY_CUTS[1])

    def pool(unprefixed_copies: int, cut: Iterable[Any], cuts: prefixes.CutConfig = paper) -> list[PrefixedProblem]:
        built, _ = prefixes.build_pool(
            train, cut,
            strategy=prefixes.FixedRandomCuts(cfg=cuts),
            cfg=prefixes.PoolConfig(max_prompt_tokens=SYNTHETIC_MAX_LEN - s.rl.gen_tokens,
                                    unprefixed_copies=unprefixed_copies, too_long=prefixes.TooLongPolicy.SKIP,
                                    shuffle_seed=s.regime.seed),
            format_prompt=format_prompt, policy_tokenizer_name=tokenizer_name(tokenizer),
            policy_tokenizer=tokenizer)  # fmt: skip
        return built

    unprefixed = [PrefixedProblem(problem=p, prompt_ids=format_prompt(p), prefix_ids=[], prefix_text="",
                                  cut_frac=0.0) for p in train]  # fmt: skip
    return {"prefixrl": pool(1, traces.values()), "prefixed_only": pool(0, traces.values()),
            "unprefixed": unprefixed, "prefixrl_sound": pool(1, sound),
            "prefixrl_early": pool(1, traces.values(), early)}


def _context(reg: Any, engine: Any, s: BenchSettings) -> Any:
    """What the methods share: splits, traces, prefix pools and the base's SFT examples (methods.Context)."""
    from prefixrl.bench.methods import Context
    from prefixrl.bench.problems import base_examples, check_gen_tokens
    from prefixrl.pipeline import num_params, prompt_formatter
    from prefixrl.sourcer import load_traces, read_progress
    from prefixrl.tasks.arith import ArithVerifier

    tok, fmt, verifier = reg.tokenizer, prompt_formatter(reg.tokenizer), ArithVerifier()
    check_gen_tokens("rl.gen_tokens", s.rl.gen_tokens, s.regime, level=reg.figures["hard_level_terms"], tokenizer=tok)
    train = reg.splits["train_hard"]
    traces = {t.problem_id: t for t in load_traces(reg.traces_dir, problems=train, verifier=verifier)}
    if not traces:
        raise RuntimeError(f"rejection sampling found no trace for any of the {len(train)} hard problems (cap "
                           f"{s.regime.source_cap}); raise regime.source_cap or lower regime.target_pass_at_k")
    return Context(
        s=s.rl, engine=engine, tokenizer=tok, verifier=verifier, format_prompt=fmt, base_dir=str(reg.base_dir),
        train=train, eval_splits={"train_hard": train, "heldout_hard": reg.splits["heldout_hard"],
                                  "heldout_medium": reg.splits["heldout_medium"]},
        traces=traces, sourcing_progress=read_progress(reg.traces_dir)[0],
        pools=trace_pools(train, traces, s, format_prompt=fmt, tokenizer=tok),
        num_params=num_params(reg.base_dir, include_embeddings=False),
        sft_examples=base_examples(s.regime), temperature=s.regime.temperature,
    )  # fmt: skip


def flops_to_reach(points: list[dict[str, float]], key: str, target: float) -> float:
    """FLOPs (x) at which the curve `key` first reaches `target`, interpolated linearly; inf if never."""
    prev = None
    for p in points:
        if p[key] >= target:
            if prev is None or p[key] == prev[key]:
                return p["flops"]
            frac = (target - prev[key]) / (p[key] - prev[key])
            return prev["flops"] + frac * (p["flops"] - prev["flops"])
        prev = p
    return math.inf

