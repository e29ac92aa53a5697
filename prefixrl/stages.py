"""The offline stages behind `prefixrl sample | select-hard | prefixes | eval`: typed settings (given on the command
line as key=value) and one function per stage. Each sampling stage runs one in-process vLLM engine on an HF model.

    prefixrl select-hard problems=train.jsonl model=/models/base out=hard.jsonl k=512
    prefixrl sample problems=hard.jsonl model=/models/base out_dir=traces cap=2500 rank=0 world_size=8
    prefixrl prefixes problems=hard.jsonl traces=traces tokenizer=/models/base out=pool.jsonl
    prefixrl eval problems=heldout.jsonl model=runs/x/hf num_samples=256

vLLM is imported only when a stage builds its engine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefixrl.pipeline import load_tokenizer, make_verifier, prompt_formatter, tokenizer_name
from prefixrl.records import Problem

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class DataSettings:
    """The problem file and how a problem becomes a prompt."""

    problems: str
    """Problem file (.jsonl, .parquet or a `datasets` directory) with id / problem / answer fields."""
    tokenizer: str | None = None
    """HF tokenizer directory or a `prefixrl.tokenizer` .model file; None: the model directory."""
    verifier: Literal["math", "arith", "exact"] = "math"
    """Answer checker (see data.verifier of `prefixrl train --help`)."""
    user_template: str = "{prompt}"
    """Format string of the user message; `{prompt}` is the problem text."""


@dataclass(kw_only=True, frozen=True)
class EngineSettings(DataSettings):
    """The sampling model and its engine."""

    model: str
    """HF model directory (config.json + safetensors)."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; None: the model's max_position_embeddings."""
    max_tokens: int = 16384
    """Generation cap per sample (lowered to fit max_model_len)."""
    temperature: float = 1.0
    """Sampling temperature."""
    kv_cache_gib: int | None = None
    """CPU engine only: KV cache in whole GiB; None keeps VLLM_CPU_KVCACHE_SPACE."""
    engine_tensor_parallel: int = 1
    """vLLM tensor-parallel size (GPU)."""
    seed: int = 0
    """Sampling seed."""


@dataclass(kw_only=True, frozen=True)
class SampleSettings(EngineSettings):
    """`prefixrl sample`: rejection sampling (stage 0), resumable, sharded over array tasks."""

    out_dir: str
    """Directory of the append-only trace shards; rerunning resumes."""
    cap: int = 2500
    """Samples per problem before giving up (paper: 2500)."""
    samples_per_round: int = 64
    """Samples per problem per generate call."""
    problems_per_round: int = 32
    """Problems sampled together."""
    rank: int = 0
    """This task's index (the array script passes SLURM_ARRAY_TASK_ID); problems are dealt round-robin."""
    world_size: int = 1
    """Number of tasks (SLURM_ARRAY_TASK_COUNT)."""


@dataclass(kw_only=True, frozen=True)
class SelectHardSettings(EngineSettings):
    """`prefixrl select-hard`: keep the problems the model never solves in k samples."""

    out: str
    """Output problem file (.jsonl) of the hard problems, with num_correct and k."""
    k: int = 512
    """Samples per problem (paper: 512)."""
    num_bins: int = 10
    """Pass-rate histogram bins over (0, 1], besides the exact-zero bin."""


@dataclass(kw_only=True, frozen=True)
class EvalSettings(EngineSettings):
    """`prefixrl eval`: unprefixed pass@k."""

    num_samples: int = 256
    """Samples per problem (pass@k for k = 1, 2, 4, ..., num_samples; paper: 256)."""
    temperature: float = 0.7
    """Sampling temperature (paper: 0.7)."""
    num_problems: int | None = None
    """Evaluate the first this many problems; None: all."""
    out: str | None = None
    """Optional JSON report (per-problem correct counts and pass@k)."""


@dataclass(kw_only=True, frozen=True)
class PrefixesSettings(DataSettings):
    """`prefixrl prefixes`: cut the traces into the prefixed training pool (3 cuts in [0.4, 0.8], 3:1 mix)."""

    traces: str
    """Directory of trace shards written by `prefixrl sample`."""
    tokenizer: str
    """The policy's tokenizer (HF directory or .model); traces from another tokenizer fail unless it matches."""
    out: str
    """Output pool (.jsonl), read by `prefixrl train data.pool=...`."""
    max_prompt_tokens: int = 19616
    """Longest prompt + prefix (rollout.max_model_len - rollout.max_new_tokens; paper: 36000 - 16384)."""
    num_cuts: int = 3
    """Prefixed variants per problem."""
    low: float = 0.4
    """Smallest cut, as a fraction of the trace's tokens."""
    high: float = 0.8
    """Largest cut, as a fraction of the trace's tokens."""
    unprefixed_copies: int = 1
    """Unprefixed copies of each solved problem (1 with 3 cuts = the paper's 3:1 mix)."""
    too_long: Literal["skip", "fail"] = "skip"
    """Prompts over max_prompt_tokens: drop and count, or fail."""
    seed: int = 0
    """Seed of the cuts and the pool shuffle."""


# ------------------------------------------------------------------------------------------------- helpers
def _problems(path: str) -> list[Problem]:
    from prefixrl.data import ProblemSetConfig, load_problems

    return load_problems(ProblemSetConfig(path=path))


def _engine_and_format(s: EngineSettings) -> tuple[Any, Any, Callable[[Problem], list[int]], int, int]:
    """(generate_fn, tokenizer, format_prompt, max_model_len, max_tokens) on a fresh engine."""
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.pipeline import build_engine

    hf_cfg = json.loads((Path(s.model) / "config.json").read_text())
    max_len = s.max_model_len or int(hf_cfg.get("max_position_embeddings", 4096))
    tokenizer = load_tokenizer(s.tokenizer or s.model)
    max_tokens = min(s.max_tokens, max_len // 2)
    if max_tokens < s.max_tokens:
        logger.warning("max_tokens=%d lowered to %d to leave room for prompts in max_model_len=%d", s.max_tokens,
                       max_tokens, max_len)  # fmt: skip
    engine = build_engine(s.model, max_model_len=max_len, seed=s.seed, kv_cache_gib=s.kv_cache_gib,
                          tensor_parallel=s.engine_tensor_parallel)  # fmt: skip
    fmt = prompt_formatter(tokenizer, user_template=s.user_template)
    return EngineGenerateFn(engine, tokenizer), tokenizer, fmt, max_len, max_tokens


# -------------------------------------------------------------------------------------------------- stages
def run_sample(s: SampleSettings, *, progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Rejection-sample this rank's problems into s.out_dir; returns counts for the summary."""
    from prefixrl.sourcer import SourcerConfig, run_sourcer

    problems = _problems(s.problems)
    generate, tokenizer, fmt, _, max_tokens = _engine_and_format(s)
    cfg = SourcerConfig(out_dir=s.out_dir, model=Path(s.model).name, tokenizer=tokenizer_name(tokenizer),
                        max_attempts=s.cap, samples_per_round=s.samples_per_round,
                        problems_per_round=s.problems_per_round, temperature=s.temperature, max_tokens=max_tokens,
                        seed=s.seed, rank=s.rank, world_size=s.world_size)  # fmt: skip
    counted = _Counting(generate, progress)
    summary = run_sourcer(cfg, problems, generate_fn=counted, verifier=make_verifier(s.verifier), format_prompt=fmt)
    generate.engine.shutdown()
    return {"problems (this rank)": len(summary.progress), "solved": summary.num_solved,
            "unsolved at the cap": summary.num_unsolved, "already done (resumed)": summary.num_resumed_done,
            "samples drawn": sum(p.num_attempts for p in summary.progress.values())}  # fmt: skip


class _Counting:
    """GenerateFn wrapper that reports the prompts each call sampled (for a progress bar)."""

    def __init__(self, inner: Any, progress: Callable[[int], None]) -> None:
        self.inner, self.progress = inner, progress

    def __call__(self, prompts: Any, *, sampling: Any) -> Any:
        out = self.inner(prompts, sampling=sampling)
        self.progress(len(prompts))
        return out


def run_select_hard(s: SelectHardSettings, *, progress: Callable[[int], None] = lambda n: None) -> Any:
    """pass@k per problem; writes the zero-success problems to s.out; returns the HardSelection."""
    from prefixrl.evaluation import EvalConfig
    from prefixrl.hard import SelectHardConfig, select_hard, write_selection

    problems = _problems(s.problems)
    generate, _, fmt, _, max_tokens = _engine_and_format(s)
    cfg = SelectHardConfig(sampling=EvalConfig(num_samples=s.k, temperature=s.temperature, max_tokens=max_tokens,
                                               problems_per_call=8, seed=s.seed), num_bins=s.num_bins)
    selection = select_hard(problems, generate_fn=_Counting(generate, progress), verifier=make_verifier(s.verifier),
                            format_prompt=fmt, cfg=cfg)  # fmt: skip
    Path(s.out).parent.mkdir(parents=True, exist_ok=True)
    write_selection(s.out, selection, problems)
    generate.engine.shutdown()
    return selection


def run_eval(s: EvalSettings, *, progress: Callable[[int], None] = lambda n: None) -> Any:
    """Unprefixed pass@k; returns the EvalReport (and writes it to s.out if set)."""
    from prefixrl.evaluation import EvalConfig, evaluate

    problems = _problems(s.problems)
    problems = problems[: s.num_problems] if s.num_problems else problems
    generate, _, fmt, _, max_tokens = _engine_and_format(s)
    report = evaluate(problems, generate_fn=_Counting(generate, progress), verifier=make_verifier(s.verifier),
                      format_prompt=fmt, cfg=EvalConfig(num_samples=s.num_samples, temperature=s.temperature,
                                                        max_tokens=max_tokens, problems_per_call=8, seed=s.seed))
    if s.out:
        Path(s.out).write_text(json.dumps({"model": s.model, "problems": s.problems, "num_samples": s.num_samples,
                                           "pass_at_k": report.pass_at_k, "num_correct": report.num_correct},
                                          indent=2) + "\n")  # fmt: skip
    generate.engine.shutdown()
    return report


def run_prefixes(s: PrefixesSettings) -> Any:
    """Build and write the pool; returns the PoolStats."""
    from prefixrl import prefixes
    from prefixrl.sourcer import load_traces

    problems = _problems(s.problems)
    tokenizer = load_tokenizer(s.tokenizer)
    traces = load_traces(s.traces, problems=problems, verifier=make_verifier(s.verifier))
    pool, stats = prefixes.build_pool(
        problems, traces,
        strategy=prefixes.FixedRandomCuts(cfg=prefixes.CutConfig(num_cuts=s.num_cuts, low=s.low, high=s.high,
                                                                  seed=s.seed)),
        cfg=prefixes.PoolConfig(max_prompt_tokens=s.max_prompt_tokens, unprefixed_copies=s.unprefixed_copies,
                                too_long=prefixes.TooLongPolicy(s.too_long), shuffle_seed=s.seed),
        format_prompt=prompt_formatter(tokenizer, user_template=s.user_template),
        policy_tokenizer_name=tokenizer_name(tokenizer), policy_tokenizer=tokenizer,
    )  # fmt: skip
    Path(s.out).parent.mkdir(parents=True, exist_ok=True)
    prefixes.write_pool(s.out, pool)
    return stats
