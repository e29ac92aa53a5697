"""The hard regime of the reproduction benchmark: a levelled-off tiny base model, a hard level chosen by measurement,
and the three figures the comparison rests on.

    base   train the tiny Llama on worked chains of EVERY level (2..max terms; any order of the terms is a correct
           solution) to the end of a cosine schedule, keeping checkpoints along the way (checkpoints/step-*); or
           copy a finished base from another run (`adopt_base`)
    probe  pass@k per level (fresh problems) of every checkpoint: whether the base levelled off. On the chosen base
           (`base_checkpoint`, the final one by default) the hard level is the shortest chain whose pass@k is at
           most `target_pass_at_k`, the medium level the longest whose pass@k is at least `medium_pass_at_k`
    splits train_hard (RL + sourcing), heldout_hard and heldout_medium (never trained on, never sourced), disjoint
           from the base's SFT prompts; with `hard_filter_k`, the two hard splits keep only problems the base fails
           that many times (the paper's pass@512 = 0 rule)
    source rejection sampling with a cap on train_hard (per-problem attempts, every token charged)
    figures base pass@k on train_hard, the fraction of train_hard with a sourced trace, and the success rate of the
           base conditioned on a 40-80% prefix of a sourced trace; also the fraction of sourced traces whose chain
           is sound (`chain_is_sound`: not a lucky guess), and whether the hard problems are equally hard
           (`prefixrl.bench.difficulty` on the sourcing log)

Every step writes its result under the run directory and is skipped when it exists (the benchmark resumes). Needs
`megatron_ext.runtime.initialize()`; Megatron and vLLM are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefixrl.bench.problems import (HARD_FILTER_POOL, HARD_SPLITS, base_corpus, base_examples, check_gen_tokens,
                                     hard_filter, level_problems, make_bench_splits, slip_kinds, slip_line_count,
                                     slip_lines, task_config, teacher_accuracy)
from prefixrl.records import Problem

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class RegimeSettings:
    """Task, base model and sourcing sizes (a preset of `prefixrl.bench.reproduce` fills them)."""

    levels: tuple[int, ...] = (2, 4, 6, 8, 11, 14)
    """Chain lengths (number of terms) the base model is trained on; the hard and medium levels are picked among
    them by measurement."""
    per_level: int = 1500
    """SFT problems per level."""
    orders_per_problem: int = 1
    """Worked orders per SFT problem: the left-to-right one first, then random valid ones. The task has many correct
    solutions (any order; the verifier checks the final answer only) whatever the base was taught; with 2 or 3 orders
    the 4-layer base was still prompt-blind after 800 steps (docs/reproduction.md), so the default teaches one."""
    first_term_max: int | None = 999
    """The first term is drawn from [1, first_term_max] (None: max_operand): it spreads the answers over 1,000."""
    max_operand: int = 9
    """Later terms are drawn from [1, max_operand]: each line is a one-digit update of the running total. (With
    two-digit terms, 1,500 x 32 SFT steps left the 4-layer base at chance on every level: docs/reproduction.md.)"""
    max_answer: int = 999
    """Answers and partial sums lie in [0, max_answer]: 1,000 possible answers."""
    multiply_prob: float = 0.0
    """Probability that a term after the first multiplies the running total (`ArithConfig.multiply_prob`: totals
    modulo max_answer + 1, so the answer is not the sum of the prompt's numbers and cannot be read off the prompt
    without the chain). 0 (the default) reproduces earlier run directories; no preset sets it yet (the trial
    commands are in docs/reproduction.md, session 11)."""
    multipliers: tuple[int, ...] = (2, 3)
    """Factors of the multiplying terms (`ArithConfig.multipliers`)."""
    labels: bool = True
    """Terms carry letter labels that each worked line repeats (`ArithConfig.labels`)."""
    random_label_start: bool = False
    """Each problem's labels start at a random letter (`ArithConfig.random_label_start`): every letter is trained at
    every position. Off (the default) reproduces the bases of earlier run directories, and no preset turns it on: the
    base did not learn to look terms up by a random label in the steps measured (docs/reproduction.md)."""
    slip_rate: float = 0.0
    """Per worked line of the base's SFT chains, the probability that the teacher writes a random wrong total and
    carries on from it (`prefixrl.tasks.arith.slipped_chain`), so that the base's ceiling comes from its data rather
    than from when its training stops. The base slips more than its teacher: at 0.4, 60 % of the teacher's lines
    are right but about 20 % of base (g)'s (docs/reproduction.md). 0 (the default) reproduces earlier run
    directories; the presets set it."""
    warm_start: str = ""
    """A saved base to continue from instead of a random init (its regime directory's `base` or
    `checkpoints/step-*`; that directory's tokenizer is reused): a curriculum for chains too long to learn from
    scratch. Session 13: levels 2-13 from scratch stayed at chance beyond 2 terms (clean loss flat at 0.22 through
    1,200 steps), where levels 2-8 jumped by step 900. "" (the default): a fresh base."""
    clean_steps: int = 0
    """With slip_rate > 0: the first clean_steps SFT steps use the teacher's chains without slips, the rest with
    them (one cosine schedule). Measured (docs/reproduction.md): with random labels and slips from step 0, the base
    (Megatron, and an HF replica) sat at loss 1.5 without even copying the previous total for 350 steps; after 150 or
    300 clean steps it copies and looks terms up but does not add yet (3 % of lines right at step 300), and slips at
    rate 0.65 from step 150 left it writing random totals. Addition is learned last, at 400-800 steps."""
    slip_kind_fraction: float = 1.0
    """The share of worked-line kinds (a term's label and step, e.g. `c + 7`; `prefixrl.tasks.arith.SlipKinds`) the
    teacher slips on, at slip_rate; it writes the other kinds right. 1.0 (the default, and every preset before
    session 22) slips on every line alike: one behaviour, which plain RL unlearns for every problem from a handful
    of right samples (session 21). Below 1 the base's errors are problem-specific: a problem is hard by its own
    lines, as the paper's hard problems are hard one by one. The kinds are drawn from `seed`."""
    early_slip_rate: float = 0.0
    """The teacher's slip rate during the first clean_steps (0, the default: clean chains). On clean chains the true
    running sum and "the written total plus this term" are the same number, and base (g) learned the first: its last
    line often gives the true sum after a wrong chain, so most sourced traces were unsound. Measured on the small
    preset (docs/reproduction.md, session 6): 0.1 raised sound traces 24 -> 31 % and prefix success 6.6 -> 8.6 %,
    0.2 lowered them to 0 % and 2.3 %; no preset uses it."""
    width: int = 3
    """Totals and answers are zero-padded to this many digits (`ArithConfig.width`). Unpadded, the 4-layer base was
    still at chance after 1,000 x 32 SFT steps (docs/reproduction.md)."""
    sft_steps: int = 2000
    """Base-model SFT steps (cosine schedule to lr/10): 73 min measured on 2 cores. With 1,200 steps (unlabelled)
    the probe was still rising at the last checkpoint; the probe curve in regime.json shows whether this base
    levelled off (docs/reproduction.md). Train it once and share it: `--base-from`."""
    sft_batch: int = 32
    """Sequences per SFT step."""
    sft_lr: float = 2e-3
    """Peak SFT learning rate."""
    checkpoints: int = 4
    """Base checkpoints saved along the SFT run (plus the final one) for the levelling-off curve."""
    base_checkpoint: str = "base"
    """The base every method starts from: "base" (the end of the SFT schedule) or a saved checkpoint such as
    "step-01200", for when the final base is already too strong for a hard level to exist (the issue: pick one
    inside the learning window). The probe measures every checkpoint, so regime/probe.json is what to choose from;
    the hard and medium levels are picked on the chosen one. Not part of the base: `--base-from` still reuses it."""
    probe_problems: int = 64
    """Fresh problems per level for the level probe."""
    probe_k: int = 8
    """Samples per problem in the probe (the pass@k the regime is defined by)."""
    target_pass_at_k: float = 0.05
    """The hard level: the shortest chain with base pass@k at most this."""
    confirm_problems: int = 0
    """After the probe, the hard level is confirmed on this many fresh problems at the chosen checkpoint, and while
    its pass@k there is above target_pass_at_k the next longer level is tried (0: no confirmation). A 64-problem
    probe cannot tell 2 % from 9 %: session 11's picked level had pass@8 1.6 % on the probe and 9.0 % on train_hard."""
    hard_filter_k: int = 0
    """The paper's rule for hard problems (its pass@512 = 0): train_hard and heldout_hard keep only problems on which
    the base gets none of hard_filter_k samples right, taken in order from hard_filter_pool times as many candidates
    of the hard level (`prefixrl.bench.problems.hard_filter`). Without it the splits are random problems of the
    hard level, and some are easy enough for plain RL to learn from (session 17: sourcing's first-success rounds
    reject equal difficulty, p = 0.006). The filter's samples are reported in regime.json (`hard_filter`) and
    charged to no method, as in the paper; sourcing then samples afresh. 0 (the default): no filter."""
    hard_filter_pool: int = HARD_FILTER_POOL
    """With hard_filter_k: candidates drawn per wanted hard problem (the filter checks them in order and stops once
    it has enough). Raise it when fewer than 1 in hard_filter_pool candidates fail all hard_filter_k samples."""
    medium_pass_at_k: float = 0.3
    """The medium level: the longest chain with base pass@k at least this."""
    train_hard: int = 256
    """Hard training problems (RL and sourcing)."""
    heldout_hard: int = 128
    """Held-out hard problems (evaluation only)."""
    heldout_medium: int = 128
    """Held-out medium problems (evaluation only)."""
    source_cap: int = 1024
    """Rejection-sampling attempts per problem."""
    prefix_probe_problems: int = 64
    """Solved problems whose 40-80% prefix success is measured."""
    gen_tokens: int = 224
    """Generation cap of every sampling stage."""
    temperature: float = 1.0
    """Sampling temperature of every stage that samples: the level probe, the base evaluation, sourcing, the prefix
    probe, and every method's rollouts and evaluations (the trainer divides its logits by it too, so the policy that
    RL and SFT train is the tempered one). The regime's figures hold at this temperature only: on trial 2's
    multiplying-chains base, 8-term pass@1 is 1.0 % at 1.0, 5.6 % at 0.7 and 16.8 % at 0.5, and 17 / 44 / 74 % of
    the right answers are sound chains (docs/reproduction.md, session 12). 1.0 (the default) reproduces earlier run
    directories."""
    seed: int = 0
    """Seed of the task, the tokenizer corpus and the base model."""

    def __post_init__(self) -> None:
        if self.warm_start:
            if not (Path(self.warm_start) / "config.json").exists():
                raise ValueError(f"warm_start={self.warm_start!r} is not a saved base (no config.json); name a "
                                 "regime directory's base or checkpoints/step-* folder")
            warm_start_tokenizer(Path(self.warm_start))
        if self.hard_filter_k < 0:
            raise ValueError(f"hard_filter_k={self.hard_filter_k} must be >= 0 (0: no filter; the paper keeps the "
                             "problems with pass@512 = 0)")
        if self.hard_filter_pool < 1:
            raise ValueError(f"hard_filter_pool={self.hard_filter_pool} must be >= 1 (candidates per wanted problem)")
        if self.confirm_problems < 0:
            raise ValueError(f"confirm_problems={self.confirm_problems} must be >= 0 (0: no confirmation)")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (every stage samples; for near-greedy "
                             "sampling use a small value such as 0.1)")
        if not 0.0 <= self.slip_rate < 1.0:
            raise ValueError(f"slip_rate={self.slip_rate} must be in [0, 1)")
        if not 0.0 < self.slip_kind_fraction <= 1.0:
            raise ValueError(f"slip_kind_fraction={self.slip_kind_fraction} must be in (0, 1] (1: the teacher may "
                             "slip on every kind of line)")
        if not 0.0 <= self.early_slip_rate <= self.slip_rate:
            raise ValueError(f"early_slip_rate={self.early_slip_rate} must be in [0, slip_rate={self.slip_rate}]")
        if self.early_slip_rate > 0 and not self.clean_steps:
            raise ValueError(f"early_slip_rate={self.early_slip_rate} with clean_steps=0 is never used; set "
                             "clean_steps (the steps it applies to)")
        if self.slip_rate > 0 and self.clean_steps >= self.sft_steps:
            raise ValueError(f"clean_steps={self.clean_steps} >= sft_steps={self.sft_steps}: the slipping teacher "
                             "would never be used; lower clean_steps or raise sft_steps")


# ------------------------------------------------------------------------------------------------ stages
def warm_start_tokenizer(model_dir: Path) -> Path:
    """The tokenizer.model of the regime directory that holds `model_dir` (its `base` or `checkpoints/step-*`)."""
    for d in (model_dir.parent, model_dir.parent.parent):
        if (d / "tokenizer.model").exists():
            return d / "tokenizer.model"
    raise ValueError(f"no tokenizer.model next to {model_dir} or its parent: warm_start must be a base or "
                     "checkpoint inside a benchmark's regime directory (its tokenizer goes with it)")


def train_base(out: Path, s: RegimeSettings) -> dict[str, Any]:
    """Tokenizer + SFT of the tiny base on every level -> out/tokenizer.model, out/base, out/checkpoints/step-*."""
    from prefixrl.pipeline import SFT_STATE_DIR, sft_base_model
    from prefixrl.tokenizer import SentencePieceTokenizer

    done = out / "base.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    corpus, final = base_corpus(s), base_examples(s)
    switch = (s.clean_steps, final) if s.slip_rate > 0 and s.clean_steps else None
    examples = base_examples(replace(s, slip_rate=s.early_slip_rate, early_slip_rate=0.0)) if switch else final
    cfg = task_config(s, hard=max(s.levels), medium=max(s.levels), seed=s.seed)
    resumed = (out / SFT_STATE_DIR).exists() and (out / "tokenizer.model").exists()  # an interrupted SFT continues
    if s.warm_start:
        tokenizer = SentencePieceTokenizer.load(warm_start_tokenizer(Path(s.warm_start)))
    elif resumed:
        tokenizer = SentencePieceTokenizer.load(out / "tokenizer.model")
    else:
        tokenizer = SentencePieceTokenizer.train([p.prompt for p in corpus] + [t for _, t in final], vocab_size=384)
    tokenizer.save(out / "tokenizer.model")
    check_gen_tokens("regime.gen_tokens", s.gen_tokens, s, level=max(s.levels), tokenizer=tokenizer)
    save_every = max(1, s.sft_steps // (s.checkpoints + 1)) if s.checkpoints else 0
    _, losses = sft_base_model(out, tokenizer, {}, cfg, steps=s.sft_steps, batch=s.sft_batch, seed=s.seed,
                               examples=examples, lr=s.sft_lr, save_every=save_every,
                               examples_after=switch, init=Path(s.warm_start) if s.warm_start else None,
                               state_every=BASE_STATE_EVERY)  # fmt: skip
    info = {"sft_steps": s.sft_steps, "sft_examples": len(final), "sft_problems": len(corpus),
            "sft_sequences": s.sft_steps * s.sft_batch,
            "loss_first_last": [losses[0], sum(losses[-20:]) / len(losses[-20:])],
            "loss_curve": losses[:: max(1, len(losses) // 50)], "wall_s": time.perf_counter() - t0,
            "resumed": resumed}  # fmt: skip
    (out / "base_prompts.json").write_text(json.dumps(sorted(p.prompt for p in corpus)))
    done.write_text(json.dumps(info, indent=1))
    shutil.rmtree(out / SFT_STATE_DIR, ignore_errors=True)
    return info


BASE_STATE_EVERY = 200
"""The base's SFT saves its whole training state every that many steps (`pipeline.sft_base_model`): a killed regime
stage loses at most that many steps of its longest part (the full preset's base: 4,800 steps, 53 min on 2 cores).
A resumed base's wall_s in base.json counts its last start only (base.json says "resumed": true)."""


BASE_FIELDS = ("levels", "per_level", "orders_per_problem", "first_term_max", "max_operand", "max_answer",
               "multiply_prob", "multipliers", "labels", "random_label_start", "slip_rate", "slip_kind_fraction",
               "clean_steps", "early_slip_rate", "width", "sft_steps", "sft_batch", "sft_lr", "checkpoints", "seed",
               "warm_start")
"""The RegimeSettings fields the base model (and its tokenizer) depends on."""
PROBE_FIELDS = (*BASE_FIELDS, "probe_problems", "probe_k", "gen_tokens", "temperature")
"""The fields the level probe's curve depends on as well (the level targets only pick from it; its confirmation step
records and checks its own checkpoint, problem count and target)."""


def adopt_base(src: Path, out: Path, s: RegimeSettings, src_settings: dict[str, Any]) -> list[str]:
    """Copy a finished base stage (and its level probe, when the probe settings match too) from another benchmark's
    regime directory `src`, whose RegimeSettings were `src_settings`; returns what was copied. The base takes the
    longest of all stages (tens of minutes), and presets and seeds that share its settings need not redo it. A base
    trained with other settings is refused with the fields that differ. Nothing is copied when `out` has a base."""
    import shutil

    if (out / "base.json").exists():
        return []
    if not (src / "base.json").exists():
        raise FileNotFoundError(f"{src} has no finished base (no base.json); point --base-from at a benchmark "
                                "directory whose base stage finished")
    mine = json.loads(json.dumps({f: getattr(s, f) for f in PROBE_FIELDS}))
    differ = [f for f in BASE_FIELDS if src_settings.get(f) != mine[f]]
    if differ:
        raise ValueError("the base in " + str(src) + " was trained with other settings: "
                         + ", ".join(f"{f}={src_settings.get(f)!r} (here {mine[f]!r})" for f in differ)
                         + "; train a new base (drop --base-from) or use a preset with the same base settings")
    out.mkdir(parents=True, exist_ok=True)
    names = ["tokenizer.model", "base_prompts.json", "base", "init", "checkpoints"]
    if (src / "probe.json").exists() and all(src_settings.get(f) == mine[f] for f in PROBE_FIELDS):
        names.append("probe.json")
    copied = [n for n in names if (src / n).exists()]
    for n in copied:  # an interrupted copy is redone over what it left (base.json is not there yet)
        if (src / n).is_dir():
            shutil.copytree(src / n, out / n, dirs_exist_ok=True)
        else:
            shutil.copy2(src / n, out / n)
    shutil.copy2(src / "base.json", out / "base.json")  # last: it marks the stage done
    return [*copied, "base.json"]


def hf_tensors(model_dir: Path) -> list[tuple[str, Any]]:
    """An HF checkpoint's tensors (for pushing a saved checkpoint into a running engine)."""
    from safetensors.torch import load_file

    return [kv for f in sorted(model_dir.glob("*.safetensors")) for kv in load_file(str(f)).items()]


def probe_levels(out: Path, s: RegimeSettings, *, engine: Any, tokenizer: Any) -> dict[str, Any]:
    """pass@k per level for every saved base checkpoint (final one last), plus the hard level's confirmation at the
    chosen checkpoint when confirm_problems > 0 (redone alone for another checkpoint or count); picks nothing."""
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.evaluation import EvalConfig, evaluate
    from prefixrl.pipeline import prompt_formatter
    from prefixrl.tasks.arith import ArithVerifier

    done = out / "probe.json"
    gen, fmt = EngineGenerateFn(engine, tokenizer), prompt_formatter(tokenizer)
    ecfg = EvalConfig(num_samples=s.probe_k, temperature=s.temperature, max_tokens=s.gen_tokens, seed=s.seed)

    def pass_at_k(ps: list[Problem]) -> float:
        report = evaluate(ps, generate_fn=gen, verifier=ArithVerifier(), format_prompt=fmt, cfg=ecfg)
        return report.pass_at_k[s.probe_k]

    if done.exists():
        info = json.loads(done.read_text())
    else:
        t0 = time.perf_counter()
        ckpts = [*sorted((out / "checkpoints").glob("step-*")), out / "base"]
        probes = {lv: level_problems(s, level=lv, count=s.probe_problems, tag="probe", seed=s.seed + 2)
                  for lv in s.levels}  # fmt: skip
        curve: dict[str, dict[str, float]] = {}
        for ck in ckpts:
            engine.update_weights(iter(hf_tensors(ck)))
            curve[ck.name] = {str(lv): pass_at_k(ps) for lv, ps in probes.items()}
            logger.info("probe %s: %s", ck.name, curve[ck.name])
        info = {"pass_at_k": s.probe_k, "curve": curve, "wall_s": time.perf_counter() - t0}
        done.write_text(json.dumps(info, indent=1))
    if s.confirm_problems and info.get("confirm_for") != (confirm_for := confirmation_key(s)):
        t0 = time.perf_counter()
        engine.update_weights(iter(hf_tensors(base_checkpoint_dir(out, s))))
        row = {int(lv): v for lv, v in info["curve"][s.base_checkpoint].items()}
        confirmed = confirm_hard_level(row, s, lambda lv: pass_at_k(
            level_problems(s, level=lv, count=s.confirm_problems, tag="confirm", seed=s.seed + 5)))
        info |= {"confirm": {str(lv): v for lv, v in confirmed.items()}, "confirm_for": confirm_for,
                 "confirm_wall_s": time.perf_counter() - t0}  # fmt: skip
        logger.info("probe: hard level confirmed on %d problems: %s", s.confirm_problems, info["confirm"])
        done.write_text(json.dumps(info, indent=1))
    return info


def confirmation_key(s: RegimeSettings) -> dict[str, Any]:
    """What the hard level's confirmation in probe.json was measured for: another checkpoint, problem count or
    target redoes it (a probe.json written before the target was recorded is confirmed again)."""
    return {"checkpoint": s.base_checkpoint, "problems": s.confirm_problems, "target": s.target_pass_at_k}


def confirm_hard_level(row: dict[int, float], s: RegimeSettings, measure: Callable[[int], float]) -> dict[int, float]:
    """{level: pass@k on confirm_problems fresh problems} from the probe's hard pick on `row` (the chosen checkpoint's
    probe row) up to the first level whose `measure(level)` is <= target_pass_at_k, or the longest level."""
    levels = sorted(s.levels)
    start = next((lv for lv in levels if row[lv] <= s.target_pass_at_k), levels[-1])
    measured: dict[int, float] = {}
    for level in levels[levels.index(start):]:
        measured[level] = measure(level)
        if measured[level] <= s.target_pass_at_k:
            break
    return measured


def pick_levels(probe: dict[str, Any], s: RegimeSettings) -> tuple[int, int]:
    """(hard, medium) on the chosen base's probe row: the shortest chain with pass@k <= target_pass_at_k (else the
    longest level) -- the last confirmed level when the probe confirmed it (confirm_problems) -- and the longest
    shorter one with pass@k >= medium_pass_at_k (else the shortest level)."""
    row = {int(lv): v for lv, v in probe["curve"][s.base_checkpoint].items()}
    hard = next((lv for lv in s.levels if row[lv] <= s.target_pass_at_k), max(s.levels))
    if s.confirm_problems:
        if probe.get("confirm_for") != confirmation_key(s):
            raise RuntimeError(f"the probe holds no confirmation on {s.confirm_problems} problems at "
                               f"{s.base_checkpoint} (it has {probe.get('confirm_for')}); probe_levels makes it")
        hard = max(int(lv) for lv in probe["confirm"])
    medium = max((lv for lv in s.levels if lv < hard and row[lv] >= s.medium_pass_at_k), default=min(s.levels))
    return hard, medium


def base_checkpoint_dir(out: Path, s: RegimeSettings) -> Path:
    """The directory of `s.base_checkpoint` under the regime directory `out` (ValueError listing the saved ones)."""
    path = out / "base" if s.base_checkpoint == "base" else out / "checkpoints" / s.base_checkpoint
    if not (path / "config.json").exists():
        saved = ["base", *(p.name for p in sorted((out / "checkpoints").glob("step-*")))]
        raise ValueError(f"base_checkpoint={s.base_checkpoint!r} is not a saved base under {out}; "
                         f"choose one of {saved}")
    return path


@dataclass(slots=True)
class Regime:
    """What the later stages need: the splits, the tokenizer, and where the base and the traces are."""

    out: Path
    base_dir: Path
    tokenizer: Any
    splits: dict[str, list[Problem]]
    figures: dict[str, Any]

    @property
    def traces_dir(self) -> Path:
        return self.out / "traces"


def build_regime(out: Path, s: RegimeSettings, *, engine_factory: Any) -> tuple[Regime, Any]:
    """All regime stages (module docstring) -> (Regime, the engine on the base, for the caller to reuse)."""
    from prefixrl.bench.difficulty import FirstErrorTally
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.evaluation import EvalConfig, evaluate
    from prefixrl.pipeline import load_tokenizer, num_params, prompt_formatter, tokenizer_name
    from prefixrl.sourcer import SourcerConfig, load_traces, read_progress, run_sourcer
    from prefixrl.tasks.arith import TRACE_KINDS, ArithVerifier, trace_kind

    out.mkdir(parents=True, exist_ok=True)
    if (floor := chance(s))["sourced_fraction"] >= 0.1:
        logger.warning("regime: a uniformly random answer out of %d solves %.0f %% of the problems within the "
                       "sourcing cap of %d, so sourced traces can be luck; raise regime.max_answer (and "
                       "first_term_max) or lower regime.source_cap",
                       s.max_answer + 1, 100 * floor["sourced_fraction"], s.source_cap)
    base_info = train_base(out, s)
    tokenizer = load_tokenizer(out / "tokenizer.model")
    check_gen_tokens("regime.gen_tokens", s.gen_tokens, s, level=max(s.levels), tokenizer=tokenizer)
    base_dir = base_checkpoint_dir(out, s)
    engine = engine_factory(base_dir)
    probe = probe_levels(out, s, engine=engine, tokenizer=tokenizer)
    engine.update_weights(iter(hf_tensors(base_dir)))
    hard_level, medium_level = pick_levels(probe, s)
    exclude = set(json.loads((out / "base_prompts.json").read_text()))
    splits = make_bench_splits(s, hard=hard_level, medium=medium_level, exclude=exclude)
    verifier, fmt, gen = ArithVerifier(), prompt_formatter(tokenizer), EngineGenerateFn(engine, tokenizer)
    filtered = None
    if s.hard_filter_k:
        def check(ps: list[Problem]) -> list[tuple[bool, int]]:
            prompts = [fmt(p) for p in ps]
            outs = engine.generate(prompts, n=s.hard_filter_k, max_tokens=s.gen_tokens, temperature=s.temperature,
                                   seed=s.seed + 5)  # fmt: skip
            return [(any(verifier(p, tokenizer.decode(c.token_ids)) for c in cs),
                     sum(len(ids) + len(c.token_ids) for c in cs)) for p, ids, cs in zip(ps, prompts, outs)]

        pool = replace(s, **{k: s.hard_filter_pool * getattr(s, k) for k in HARD_SPLITS})
        candidates = make_bench_splits(pool, hard=hard_level, medium=medium_level, exclude=exclude)
        t0 = time.perf_counter()
        kept, filtered = hard_filter(out / "hard_filter.json", s, {k: candidates[k] for k in HARD_SPLITS}, check)
        splits |= kept
        filtered["flops"] = 2.0 * num_params(base_dir, include_embeddings=False) * filtered["tokens"]
        logger.info("regime: hard filter (pass@%d = 0) kept %s in %.0f s", s.hard_filter_k,
                    {k: f"{filtered[k]['kept']} of {filtered[k]['checked']}" for k in HARD_SPLITS},
                    time.perf_counter() - t0)
    fig_path = out / "regime.json"
    if fig_path.exists():
        figures = json.loads(fig_path.read_text())
        before = dict(figures)  # figures added since this directory's regime stage, from what it left
        if "difficulty" not in figures:
            figures["difficulty"] = difficulty_figures(out, s, splits["train_hard"])
        figures.setdefault("chance", chance(s))
        if "slip_lines" not in figures:
            progress, _ = read_progress(out / "traces")
            figures["slip_lines"] = slip_line_figures(s, splits, [p for p in splits["train_hard"] if p.problem_id
                                                                  in progress and progress[p.problem_id].solved])
        if "teacher_pass_at_1" not in figures:
            figures["teacher_pass_at_1"] = teacher_accuracy(s)
        if filtered is not None:
            figures.setdefault("hard_filter", filtered)
        if figures != before:
            fig_path.write_text(json.dumps(figures, indent=1))
        return Regime(out=out, base_dir=base_dir, tokenizer=tokenizer, splits=splits, figures=figures), engine
    ecfg = EvalConfig(num_samples=s.probe_k, temperature=s.temperature, max_tokens=s.gen_tokens, seed=s.seed + 3)
    t0 = time.perf_counter()
    errors = FirstErrorTally(verifier, slip_kinds(s))  # where the base's train_hard samples go wrong
    base_eval = {name: evaluate(ps, generate_fn=gen, verifier=errors if name == "train_hard" else verifier,
                                format_prompt=fmt, cfg=ecfg).pass_at_k for name, ps in splits.items()}  # fmt: skip
    wall = {"base_eval": time.perf_counter() - t0}
    run_sourcer(SourcerConfig(out_dir=str(out / "traces"), model="bench-base", tokenizer=tokenizer_name(tokenizer),
                              max_attempts=s.source_cap, samples_per_round=sourcing_round(s),
                              problems_per_round=64, max_tokens=s.gen_tokens, temperature=s.temperature,
                              seed=s.seed, keep_logprobs=True),
                splits["train_hard"], generate_fn=gen, verifier=verifier, format_prompt=fmt)  # fmt: skip
    wall["sourcing"] = time.perf_counter() - t0 - wall["base_eval"]
    progress, _ = read_progress(out / "traces")
    solved = [p for p in splits["train_hard"] if p.problem_id in progress and progress[p.problem_id].solved]
    by_id = {p.problem_id: p for p in splits["train_hard"]}
    sourced = load_traces(out / "traces")  # one per solved problem (the sourcer's default)
    kinds = [trace_kind(by_id[t.problem_id], t.text) for t in sourced]
    t1 = time.perf_counter()
    success = prefix_success(out, s, solved, engine=engine, tokenizer=tokenizer,
                             sound={t.problem_id: k == "sound" for t, k in zip(sourced, kinds)})
    wall["prefix_probe"] = time.perf_counter() - t1
    figures = {
        "base_checkpoint": s.base_checkpoint, "hard_level_terms": hard_level, "medium_level_terms": medium_level,
        "answer_space": s.max_answer + 1, "train_hard": len(splits["train_hard"]), "temperature": s.temperature,
        "base_pass_at_k_train_hard": base_eval["train_hard"][s.probe_k],
        "base_pass_at_1": {k: v[1] for k, v in base_eval.items()},
        "base_pass_at_k": {k: v[s.probe_k] for k, v in base_eval.items()}, "k": s.probe_k,
        "sourced_fraction": len(solved) / len(splits["train_hard"]), "source_cap": s.source_cap,
        "sourcing_attempts_mean": sum(progress[p.problem_id].num_attempts for p in splits["train_hard"]
                                      if p.problem_id in progress) / len(splits["train_hard"]),
        "sound_trace_fraction": kinds.count("sound") / max(1, len(kinds)),
        "sourced_trace_kinds": {k: kinds.count(k) for k in TRACE_KINDS},
        "prefix_success": success["all"], "prefix_success_by_trace": success,
        "difficulty": difficulty_figures(out, s, splits["train_hard"]), "chance": chance(s),
        "teacher_pass_at_1": teacher_accuracy(s), "slip_lines": slip_line_figures(s, splits, solved),
        "base_first_errors": errors.figures(), "wall_s": wall, "hard_filter": filtered,
        "base": {k: v for k, v in base_info.items() if k != "loss_curve"}, "probe": probe,
    }  # fmt: skip
    fig_path.write_text(json.dumps(figures, indent=1))
    return Regime(out=out, base_dir=base_dir, tokenizer=tokenizer, splits=splits, figures=figures), engine


def slip_line_figures(s: RegimeSettings, splits: dict[str, list[Problem]],
                      solved: list[Problem]) -> dict[str, Any] | None:
    """With a teacher that slips on some kinds of line only (slip_kind_fraction < 1): per split how many of a
    problem's lines are of those kinds (`problems.slip_lines`), and train_hard's sourced fraction by that count
    ({count: [solved, problems]}): whether a problem's own lines set its hardness. None otherwise."""
    kinds = slip_kinds(s)
    if kinds is None:
        return None
    ids = {p.problem_id for p in solved}
    by_count: dict[str, list[int]] = {}
    for p in splits["train_hard"]:
        row = by_count.setdefault(str(slip_line_count(kinds, p)), [0, 0])
        row[0] += p.problem_id in ids
        row[1] += 1
    return {"splits": {k: slip_lines(s, ps) for k, ps in splits.items()},
            "train_hard_sourced_by_count": dict(sorted(by_count.items()))}


def sourcing_round(s: RegimeSettings) -> int:
    """Samples per problem per sourcing round (the sourcer's samples_per_round; the difficulty test reads the
    rounds back from the attempts)."""
    return min(64, s.source_cap)


def chance(s: RegimeSettings) -> dict[str, float]:
    """The regime figures of a uniformly random answer (`prefixrl.bench.difficulty.chance_floor`): the floor the
    base's pass@k and sourced fraction are to be read against."""
    from prefixrl.bench.difficulty import chance_floor

    return chance_floor(s.max_answer + 1, k=s.probe_k, cap=s.source_cap)


def difficulty_figures(out: Path, s: RegimeSettings, train_hard: list[Problem]) -> dict[str, Any] | None:
    """Whether train_hard's problems are equally hard for the base, from the sourcing log
    (`prefixrl.bench.difficulty.geometric_fit` on each problem's first-success round), and the fitted per-sample
    success rate by the number of multiplying terms of a problem (when the task multiplies). None when the sourcing
    cap is a single round (at most 64 attempts, e.g. the smoke preset): one round leaves no degree of freedom."""
    from prefixrl.bench.difficulty import first_success_rounds, geometric_fit, rates_by_group
    from prefixrl.sourcer import read_progress

    per_round = sourcing_round(s)
    progress, _ = read_progress(out / "traces")
    rounds = first_success_rounds({p.problem_id: (progress[p.problem_id].num_attempts, progress[p.problem_id].solved)
                                   for p in train_hard}, per_round)  # fmt: skip
    max_rounds = -(-s.source_cap // per_round)
    if max_rounds < 2:
        logger.info("regime: no equal-difficulty test, the sourcing cap (%d) is one round", s.source_cap)
        return None
    fit = geometric_fit(list(rounds.values()), max_rounds=max_rounds, samples_per_round=per_round)
    if s.multiply_prob > 0:
        mults = {p.problem_id: sum(isinstance(t, str) for t in p.metadata["terms"]) for p in train_hard}
        fit["by_multiplications"] = rates_by_group(rounds, mults, max_rounds=max_rounds, samples_per_round=per_round)
    return fit


def prefix_success(out: Path, s: RegimeSettings, solved: list[Problem], *, engine: Any, tokenizer: Any,
                   sound: dict[str, bool]) -> dict[str, float]:
    """Success of the base conditioned on one 40-80% prefix of a sourced trace (probe_k samples each, the first
    `prefix_probe_problems` solved problems): {"all": the regime figure, "sound" / "unsound": the same over the
    prefixes of sound / unsound traces (`sound`: problem id -> whether its trace is sound; nan when there are
    none), "sound_traces" / "unsound_traces": how many prefixes each rests on}."""
    from prefixrl import prefixes
    from prefixrl.pipeline import prompt_formatter, tokenizer_name
    from prefixrl.sourcer import load_traces
    from prefixrl.tasks.arith import ArithVerifier

    chosen = solved[: s.prefix_probe_problems]
    if not chosen:
        return {"all": 0.0, "sound": math.nan, "unsound": math.nan, "sound_traces": 0, "unsound_traces": 0}
    traces = load_traces(out / "traces", problems=chosen)
    pool, _ = prefixes.build_pool(
        chosen, traces, strategy=prefixes.FixedRandomCuts(cfg=prefixes.CutConfig(num_cuts=1, low=0.4, high=0.8,
                                                                                 seed=s.seed)),
        cfg=prefixes.PoolConfig(max_prompt_tokens=4096, unprefixed_copies=0, shuffle_seed=s.seed),
        format_prompt=prompt_formatter(tokenizer), policy_tokenizer_name=tokenizer_name(tokenizer),
        policy_tokenizer=tokenizer)  # fmt: skip
    outs = engine.generate([p.input_ids for p in pool], n=s.probe_k, max_tokens=s.gen_tokens,
                           temperature=s.temperature, seed=s.seed + 4)  # fmt: skip
    verifier = ArithVerifier()
    rates: dict[str, list[bool]] = {"all": [], "sound": [], "unsound": []}
    for p, cs in zip(pool, outs):
        ok = [verifier(p.problem, p.prefix_text + tokenizer.decode(c.token_ids)) for c in cs]
        rates["all"] += ok
        rates["sound" if sound[p.problem.problem_id] else "unsound"] += ok
    result: dict[str, float] = {k: sum(v) / len(v) if v else math.nan for k, v in rates.items()}
    return result | {f"{k}_traces": len(rates[k]) // s.probe_k for k in ("sound", "unsound")}
