"""Evaluation without prefixes: the unbiased pass@k estimator and an N-samples-per-problem evaluation routine.

    report = evaluate(problems, generate_fn=engine.generate, verifier=MathVerifier(), format_prompt=fmt,
                      cfg=EvalConfig(num_samples=256, temperature=0.7))
    report.pass_at_k  # {1: ..., 2: ..., 4: ..., ..., 256: ...}

Method notes 7: no prefixes at test time; 256 samples per problem at temperature 0.7; pass@k for k = 1, 2, 4, ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prefixrl.protocols import GenerateFn, Verifier
from prefixrl.records import FinishReason, Problem, SamplingParams

logger = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n - c, k) / C(n, k).

    Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the huge binomials.
    """
    if n < 1 or not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need n >= 1, 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def ks_for(num_samples: int) -> list[int]:
    """Powers of two up to num_samples, plus num_samples itself."""
    ks = [1 << i for i in range(num_samples.bit_length()) if 1 << i <= num_samples]
    return ks if ks[-1] == num_samples else [*ks, num_samples]


@dataclass(kw_only=True, frozen=True)
class EvalConfig:
    """Sample-and-verify settings of held-out evaluation (paper: 256 samples at T = 0.7, 16k generation cap); also
    nested in `prefixrl.hard.SelectHardConfig`."""

    num_samples: int = 256
    """Samples per problem (N); pass@k is reported for k = 1, 2, 4, ..., N."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 16384
    problems_per_call: int = 64
    """Problems per generate call."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.problems_per_call < 1:
            raise ValueError(
                f"num_samples={self.num_samples} and problems_per_call={self.problems_per_call} must be >= 1"
            )


@dataclass(slots=True)
class EvalReport:
    """Per-problem correct counts and the mean pass@k over problems."""

    num_samples: int
    num_correct: dict[str, int] = field(default_factory=dict)
    """problem_id -> correct samples out of num_samples."""
    pass_at_k: dict[int, float] = field(default_factory=dict)
    """k -> pass@k averaged over problems."""
    num_sampled_tokens: int = 0
    """Prompt + completion tokens over all samples (for FLOP accounting)."""

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        return {f"{prefix}/pass@{k}": v for k, v in self.pass_at_k.items()}


def summarize(num_correct: dict[str, int], *, num_samples: int) -> dict[int, float]:
    """Mean pass@k over problems for every k of `ks_for(num_samples)`."""
    if not num_correct:
        raise ValueError("no problems to summarise")
    return {
        k: sum(pass_at_k(num_samples, c, k) for c in num_correct.values()) / len(num_correct)
        for k in ks_for(num_samples)
    }


def count_correct(
    problems: Sequence[Problem],
    *,
    generate_fn: GenerateFn,
    verifier: Verifier,
    format_prompt: Callable[[Problem], list[int]],
    cfg: EvalConfig,
) -> tuple[dict[str, int], int]:
    """Sample `cfg.num_samples` unprefixed completions per problem; returns problem_id -> number verified correct,
    and the prompt + completion tokens sampled. Truncated or aborted completions count as incorrect."""
    sampling = SamplingParams(
        n=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed
    )
    problems_per_call = cfg.problems_per_call
    num_correct: dict[str, int] = {}
    num_tokens = 0
    for start in range(0, len(problems), problems_per_call):
        chunk = problems[start : start + problems_per_call]
        prompts = [format_prompt(p) for p in chunk]
        outputs = generate_fn(prompts, sampling=sampling)
        if len(outputs) != len(chunk):
            raise ValueError(f"generate_fn returned {len(outputs)} outputs for {len(chunk)} prompts")
        for problem, prompt_ids, completions in zip(chunk, prompts, outputs):
            if len(completions) != sampling.n:
                raise ValueError(f"generate_fn returned {len(completions)} samples, expected {sampling.n}")
            num_correct[problem.problem_id] = sum(
                c.finish_reason == FinishReason.STOP and verifier(problem, c.text) for c in completions
            )
            num_tokens += sum(len(prompt_ids) + len(c.token_ids) for c in completions)
    return num_correct, num_tokens


def evaluate(
    problems: Sequence[Problem],
    *,
    generate_fn: GenerateFn,
    verifier: Verifier,
    format_prompt: Callable[[Problem], list[int]],
    cfg: EvalConfig,
) -> EvalReport:
    """Sample cfg.num_samples unprefixed completions per problem, verify them, and report pass@1..N."""
    num_correct, num_tokens = count_correct(
        problems, generate_fn=generate_fn, verifier=verifier, format_prompt=format_prompt, cfg=cfg
    )
    report = EvalReport(
        num_samples=cfg.num_samples,
        num_correct=num_correct,
        pass_at_k=summarize(num_correct, num_samples=cfg.num_samples),
        num_sampled_tokens=num_tokens,
    )
    logger.info("evaluated %d problems: %s", len(problems), report.metrics())
    return report
