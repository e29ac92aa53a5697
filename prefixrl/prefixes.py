"""Cutting prefixes from correct traces and building the training pool (method notes 2.3-2.5).

`prefixrl prefixes` is `build_pool(...)` followed by `write_pool(...)`:

    strategy = FixedRandomCuts(cfg=CutConfig(seed=0))
    pool, stats = build_pool(problems, traces, strategy=strategy, cfg=PoolConfig(max_prompt_tokens=19616),
                             format_prompt=lambda p: chat_prompt_ids(p, tokenizer=tok, cfg=ChatFormatConfig()),
                             policy_tokenizer=tok, policy_tokenizer_name="Qwen/Qwen3-4B-Instruct-2507")

A prefix is the first h tokens of a trace, placed after the generation prompt as an unfinished assistant turn. Cut
points are drawn once, from a seed, at build time (`FixedRandomCuts`, the paper's schedule). `AdaptiveCuts` (beyond
the paper, off by default) moves a problem's cut earlier as the policy's success on it rises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from prefixrl.protocols import Tokenizer
from prefixrl.records import OffPolicyTrace, PrefixedProblem, Problem

logger = logging.getLogger(__name__)


def validate_cut_range(low: float, high: float) -> None:
    """Raise ValueError unless 0 < low <= high < 1."""
    if not (0.0 < low <= high < 1.0):
        raise ValueError(
            f"cut range low={low}, high={high} is invalid: need 0 < low <= high < 1 (fractions of the trace's "
            "tokens), e.g. low=0.4, high=0.8"
        )


def cut_points(
    num_trace_tokens: int, *, num_cuts: int = 3, low: float = 0.4, high: float = 0.8, seed: int
) -> list[int]:
    """`num_cuts` prefix lengths h, sorted, drawn uniformly from the integers in [low * n, high * n] and [1, n - 1].

    Deterministic given the seed. Cuts are distinct when that range holds at least `num_cuts` integers (a duplicate
    cut would only duplicate a prompt); otherwise every integer of the range is used and the rest repeat. When the
    range holds no integer (very short traces), the valid cut nearest to the middle of the range is used.
    """
    validate_cut_range(low, high)
    if num_cuts < 1:
        raise ValueError(f"num_cuts={num_cuts} must be >= 1")
    if num_trace_tokens < 2:
        raise ValueError(f"a trace of {num_trace_tokens} token(s) cannot be cut: need at least 2 tokens")
    n = num_trace_tokens
    lo, hi = max(1, math.ceil(low * n)), min(n - 1, math.floor(high * n))
    rng = random.Random(seed)
    if lo > hi:
        return [min(n - 1, max(1, round(0.5 * (low + high) * n)))] * num_cuts
    candidates = range(lo, hi + 1)
    if len(candidates) >= num_cuts:
        return sorted(rng.sample(candidates, num_cuts))
    return sorted([*candidates, *rng.choices(candidates, k=num_cuts - len(candidates))])


def derive_seed(seed: int, key: str) -> int:
    """A stable per-key seed (Python's hash() is salted per process, so it cannot be used)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class CutStrategy(Protocol):
    """Chooses the prefix lengths of one trace."""

    def cuts(self, trace: OffPolicyTrace) -> list[int]: ...


@dataclass(kw_only=True, frozen=True)
class CutConfig:
    """The paper's fixed random cuts."""

    num_cuts: int = 3
    """Prefixed variants per problem."""
    low: float = 0.4
    """Smallest cut, as a fraction of the trace's tokens."""
    high: float = 0.8
    """Largest cut, as a fraction of the trace's tokens."""
    seed: int = 0
    """Cuts are a deterministic function of (seed, trace id)."""

    def __post_init__(self) -> None:
        validate_cut_range(self.low, self.high)
        if self.num_cuts < 1:
            raise ValueError(f"num_cuts={self.num_cuts} must be >= 1 (the paper uses 3)")


@dataclass(slots=True)
class FixedRandomCuts:
    """Cut points drawn once per trace, uniformly in [low, high] of its tokens (Setlur et al. 2026, 2.3)."""

    cfg: CutConfig = field(default_factory=CutConfig)

    def cuts(self, trace: OffPolicyTrace) -> list[int]:
        return cut_points(
            len(trace.trace_ids),
            num_cuts=self.cfg.num_cuts,
            low=self.cfg.low,
            high=self.cfg.high,
            seed=derive_seed(self.cfg.seed, trace.trace_id),
        )


@dataclass(kw_only=True, frozen=True)
class AdaptiveCutConfig:
    """Adaptive schedule: each problem starts at `start_frac` and moves earlier while the policy solves it."""

    start_frac: float = 0.8
    """Initial cut fraction for every problem."""
    min_frac: float = 0.0
    """Earliest cut fraction; 0 means the prefix eventually shrinks to a single token."""
    step: float = 0.1
    """How far the cut moves earlier per update that meets the threshold."""
    success_threshold: float = 0.5
    """Move earlier when the policy's accuracy on the problem's prefixed prompts reaches this value."""
    num_cuts: int = 1
    """Cuts per problem; extra cuts are spread `step` apart after the current one."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_frac <= self.start_frac < 1.0):
            raise ValueError(
                f"need 0 <= min_frac <= start_frac < 1, got min_frac={self.min_frac}, start_frac={self.start_frac}"
            )
        if not (0.0 < self.step < 1.0 and 0.0 < self.success_threshold <= 1.0):
            raise ValueError(
                f"need 0 < step < 1 and 0 < success_threshold <= 1, got step={self.step}, "
                f"success_threshold={self.success_threshold}"
            )
        if self.num_cuts < 1:
            raise ValueError(f"num_cuts={self.num_cuts} must be >= 1")


@dataclass(slots=True)
class AdaptiveCuts:
    """Moves each problem's cut earlier as the policy's success on it rises (beyond the paper; off by default).

    The trainer calls `update(problem_id, accuracy)` with the accuracy of the latest group(s) of that problem's
    prefixed prompts and rebuilds those prompts with `prefixed_problems`. Serialise `fracs` to resume.
    """

    cfg: AdaptiveCutConfig = field(default_factory=AdaptiveCutConfig)
    fracs: dict[str, float] = field(default_factory=dict)
    """problem_id -> current cut fraction."""

    def frac(self, problem_id: str) -> float:
        return self.fracs.get(problem_id, self.cfg.start_frac)

    def update(self, problem_id: str, accuracy: float) -> float:
        """Record the latest accuracy; returns the (possibly moved) cut fraction."""
        frac = self.frac(problem_id)
        if accuracy >= self.cfg.success_threshold:
            frac = max(self.cfg.min_frac, round(frac - self.cfg.step, 6))
        self.fracs[problem_id] = frac
        return frac

    def cuts(self, trace: OffPolicyTrace) -> list[int]:
        n = len(trace.trace_ids)
        base = self.frac(trace.problem_id)
        fracs = [min(base + i * self.cfg.step, 0.99) for i in range(self.cfg.num_cuts)]
        return sorted({min(n - 1, max(1, math.floor(f * n))) for f in fracs})


class TooLongPolicy(StrEnum):
    """What to do with a prefixed prompt longer than the context allows."""

    SKIP = "skip"
    """Drop it, count it and log the count."""
    FAIL = "fail"
    """Raise ValueError."""


@dataclass(kw_only=True, frozen=True)
class PoolConfig:
    """How the training pool is assembled from problems and their traces."""

    max_prompt_tokens: int
    """Longest prompt + prefix allowed: the context length minus the generation cap (paper: 36000 - 16384)."""
    unprefixed_copies: int = 1
    """Unprefixed copies of each solved problem in the pool; with 3 cuts, 1 gives the paper's 3:1 mix."""
    too_long: TooLongPolicy = TooLongPolicy.SKIP
    """What to do with prompts longer than max_prompt_tokens."""
    shuffle_seed: int = 0
    """Seed of the one-time shuffle of the pool."""

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens={self.max_prompt_tokens} must be >= 1")
        if self.unprefixed_copies < 0:
            raise ValueError(f"unprefixed_copies={self.unprefixed_copies} must be >= 0 (0 = prefixed-only training)")


@dataclass(slots=True)
class PoolStats:
    """Counts from `build_pool`, for logging under `prefix/`."""

    num_prefixed: int = 0
    num_unprefixed: int = 0
    num_skipped_too_long: int = 0
    num_problems_without_trace: int = 0
    num_cross_family: int = 0
    num_prefix_with_answer: int = 0
    """Prefixes that already contain a final answer (`\\boxed`): possible answer leakage, logged not filtered."""
    cut_fracs: list[float] = field(default_factory=list)  # [num_prefixed]


def prefix_ids_for_policy(
    trace: OffPolicyTrace,
    cut: int,
    *,
    policy_tokenizer_name: str,
    policy_tokenizer: Tokenizer,
    source_tokenizers: Mapping[str, Tokenizer],
) -> tuple[list[int], str]:
    """Prefix ids in the policy's tokenizer and the prefix text (decoded, for the reward), for a cut of `cut` tokens.

    Same tokenizer: `trace_ids[:cut]` exactly, never re-tokenised. Cross-family: cut in the source tokens, decode with
    the source tokenizer, re-tokenise the text with the policy tokenizer (method notes 2.4).
    """
    source_ids = trace.trace_ids[:cut]
    if trace.tokenizer == policy_tokenizer_name:
        return list(source_ids), policy_tokenizer.decode(source_ids)
    if trace.tokenizer not in source_tokenizers:
        raise ValueError(
            f"trace {trace.trace_id} was tokenised by {trace.tokenizer!r}, the policy by {policy_tokenizer_name!r}: "
            f"pass source_tokenizers={{{trace.tokenizer!r}: <tokenizer>}} to re-tokenise it"
        )
    text = source_tokenizers[trace.tokenizer].decode(source_ids)
    return list(policy_tokenizer.encode(text, add_special_tokens=False)), text


def prefixed_problems(
    problem: Problem,
    trace: OffPolicyTrace,
    *,
    strategy: CutStrategy,
    format_prompt: Callable[[Problem], list[int]],
    policy_tokenizer_name: str,
    policy_tokenizer: Tokenizer,
    source_tokenizers: Mapping[str, Tokenizer] | None = None,
) -> list[PrefixedProblem]:
    """The prefixed variants of one problem, one per cut of `strategy`.

    A same-tokenizer trace reuses its sourcing-time `prompt_ids`, so the template boundary is exactly as when the
    trace was generated; a cross-family trace gets the policy's `format_prompt(problem)`.
    """
    same_family = trace.tokenizer == policy_tokenizer_name
    prompt_ids = list(trace.prompt_ids) if same_family else format_prompt(problem)
    out = []
    for cut in strategy.cuts(trace):
        prefix_ids, text = prefix_ids_for_policy(
            trace,
            cut,
            policy_tokenizer_name=policy_tokenizer_name,
            policy_tokenizer=policy_tokenizer,
            source_tokenizers=source_tokenizers or {},
        )
        out.append(
            PrefixedProblem(
                problem=problem,
                prompt_ids=prompt_ids,
                prefix_ids=prefix_ids,
                prefix_text=text,
                cut_frac=cut / len(trace.trace_ids),
                trace_id=trace.trace_id,
            )
        )
    return out


def build_pool(
    problems: Sequence[Problem],
    traces: Iterable[OffPolicyTrace],
    *,
    strategy: CutStrategy,
    cfg: PoolConfig,
    format_prompt: Callable[[Problem], list[int]],
    policy_tokenizer_name: str,
    policy_tokenizer: Tokenizer,
    source_tokenizers: Mapping[str, Tokenizer] | None = None,
) -> tuple[list[PrefixedProblem], PoolStats]:
    """The shuffled training pool: per problem with a trace, its prefixed variants plus `unprefixed_copies`
    unprefixed copies. Only the first trace of a problem is cut. Problems without a trace are left out (method notes
    2.2) and counted."""
    by_problem: dict[str, OffPolicyTrace] = {}
    for trace in traces:
        by_problem.setdefault(trace.problem_id, trace)
    stats = PoolStats()
    pool: list[PrefixedProblem] = []
    for problem in problems:
        trace = by_problem.get(problem.problem_id)
        if trace is None:
            stats.num_problems_without_trace += 1
            continue
        stats.num_cross_family += trace.tokenizer != policy_tokenizer_name
        variants = prefixed_problems(
            problem,
            trace,
            strategy=strategy,
            format_prompt=format_prompt,
            policy_tokenizer_name=policy_tokenizer_name,
            policy_tokenizer=policy_tokenizer,
            source_tokenizers=source_tokenizers,
        )
        for variant in variants:
            if len(variant.input_ids) > cfg.max_prompt_tokens:
                if cfg.too_long == TooLongPolicy.FAIL:
                    raise ValueError(
                        f"problem {problem.problem_id}: prompt + prefix is {len(variant.input_ids)} tokens, over "
                        f"max_prompt_tokens={cfg.max_prompt_tokens}; raise the context or set too_long='skip'"
                    )
                stats.num_skipped_too_long += 1
                continue
            pool.append(variant)
            stats.num_prefixed += 1
            stats.cut_fracs.append(variant.cut_frac)
            stats.num_prefix_with_answer += "\\boxed" in variant.prefix_text
        unprefixed = PrefixedProblem(
            problem=problem, prompt_ids=format_prompt(problem), prefix_ids=[], prefix_text="", cut_frac=0.0
        )
        pool.extend([unprefixed] * cfg.unprefixed_copies)
        stats.num_unprefixed += cfg.unprefixed_copies
    if stats.num_skipped_too_long:
        logger.warning(
            "skipped %d prefixed prompts longer than max_prompt_tokens=%d",
            stats.num_skipped_too_long,
            cfg.max_prompt_tokens,
        )
    random.Random(cfg.shuffle_seed).shuffle(pool)
    logger.info(
        "pool: %d prefixed + %d unprefixed prompts; %d problems without a trace",
        stats.num_prefixed,
        stats.num_unprefixed,
        stats.num_problems_without_trace,
    )
    return pool, stats


def write_pool(path: str | Path, pool: Sequence[PrefixedProblem]) -> None:
    """Write the pool as JSONL, one `PrefixedProblem.to_dict()` per line."""
    with Path(path).open("w", encoding="utf-8") as f:
        for item in pool:
            f.write(json.dumps(item.to_dict(), ensure_ascii=True) + "\n")


def read_pool(path: str | Path) -> list[PrefixedProblem]:
    """Read a pool written by `write_pool`."""
    with Path(path).open(encoding="utf-8") as f:
        return [PrefixedProblem.from_dict(json.loads(line)) for line in f if line.strip()]
