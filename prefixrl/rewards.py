"""Outcome rewards: math final-answer verification with math-verify, and the binary reward built on a verifier.

    verifier = MathVerifier()
    reward_fn = BinaryReward(verifier=verifier, cfg=RewardConfig())
    r = reward_fn(problem, prefix_text + completion_text, finish_reason=FinishReason.STOP)

The reward of a prefixed rollout is judged on prefix + completion text (method notes 2.9); in practice the final
answer comes from the completion. A completion truncated at the length cap gets `RewardConfig.truncated_reward`
(0 by default). A reference answer math-verify cannot parse does not crash the run: it is counted and listed in
`MathVerifier.unparsable_references`, and every response to that problem scores as incorrect.

Any other `Verifier` (e.g. an exact-match checker for a synthetic task) plugs into `BinaryReward` the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prefixrl.protocols import Verifier
from prefixrl.records import FinishReason, Problem

logger = logging.getLogger(__name__)


def _parse_reference(answer: str) -> list[Any]:
    import math_verify

    # Wrapping in \boxed{} makes math-verify extract the whole answer as LaTeX (fractions, tuples, relations, plain
    # numbers; '025' parses to 25). no_fallback: an answer it cannot read comes back empty instead of as a raw string.
    return math_verify.parse("\\boxed{" + answer + "}", fallback_mode="no_fallback")


@dataclass(slots=True)
class MathVerifier:
    """math-verify on the final answer of a response: `\\boxed{}` first, then the last LaTeX / plain expression.

    Gold answers are parsed once per problem and cached. State (cache, unparsable list) is per instance.
    """

    float_rounding: int = 6
    """Decimal places math-verify rounds floats to before comparing."""
    unparsable_references: dict[str, str] = field(default_factory=dict)
    """problem_id -> reference answer text that math-verify could not parse."""
    _gold_cache: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    def gold(self, problem: Problem) -> list[Any]:
        """Parsed reference answer; empty (and recorded in `unparsable_references`) when math-verify cannot parse."""
        if problem.problem_id not in self._gold_cache:
            parsed = _parse_reference(problem.answer)
            if not parsed:
                self.unparsable_references[problem.problem_id] = problem.answer
                logger.warning(
                    "math-verify cannot parse the reference answer %r of problem %s; it will score 0",
                    problem.answer,
                    problem.problem_id,
                )
            self._gold_cache[problem.problem_id] = parsed
        return self._gold_cache[problem.problem_id]

    def check_references(self, problems: Iterable[Problem]) -> dict[str, str]:
        """Parse every reference up front; returns (and keeps) problem_id -> answer for the unparsable ones."""
        for problem in problems:
            self.gold(problem)
        if self.unparsable_references:
            logger.warning("%d reference answers are unparsable", len(self.unparsable_references))
        return dict(self.unparsable_references)

    def __call__(self, problem: Problem, text: str) -> bool:
        import math_verify

        gold = self.gold(problem)
        if not gold:
            return False
        predicted = math_verify.parse(text)
        if not predicted:
            return False
        return bool(math_verify.verify(gold, predicted, float_rounding=self.float_rounding))


@dataclass(kw_only=True, frozen=True)
class RewardConfig:
    """Binary outcome reward settings."""

    correct_reward: float = 1.0
    """Reward of a verified-correct response."""
    incorrect_reward: float = 0.0
    """Reward of a wrong (or unverifiable) response."""
    truncated_reward: float | None = 0.0
    """Reward of a completion that hit the length cap or was aborted; None verifies it like any other."""

    def __post_init__(self) -> None:
        if self.correct_reward <= self.incorrect_reward:
            raise ValueError(
                f"correct_reward={self.correct_reward} must exceed incorrect_reward={self.incorrect_reward}"
            )


@dataclass(slots=True)
class BinaryReward:
    """RewardFn: `cfg.correct_reward` if the verifier accepts the full response text, else `cfg.incorrect_reward`."""

    verifier: Verifier
    cfg: RewardConfig = field(default_factory=RewardConfig)

    def __call__(self, problem: Problem, text: str, *, finish_reason: FinishReason) -> float:
        if finish_reason != FinishReason.STOP and self.cfg.truncated_reward is not None:
            return self.cfg.truncated_reward
        return self.cfg.correct_reward if self.verifier(problem, text) else self.cfg.incorrect_reward


@dataclass(slots=True)
class ExactMatchVerifier:
    """Verifier for synthetic tasks: the last non-empty line of the response equals the reference answer."""

    def __call__(self, problem: Problem, text: str) -> bool:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return bool(lines) and lines[-1] == problem.answer.strip()
