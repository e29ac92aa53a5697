"""Typed records that flow through PrefixRL: problems, off-policy traces, prefixed problems, rollouts, groups.

Token ids stay plain `list[int]` end to end; tensors are packed once, in `prefixrl.batching`. Records that are written
to disk (traces, prefixed problems) round-trip through `to_dict` / `from_dict` with plain JSON types.

Group = one (problem, prefix) pair, as in the paper (method notes 2.6): each prefixed variant of a problem and the
unprefixed problem are separate prompts with separate groups of n rollouts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class FinishReason(StrEnum):
    """Why the engine stopped generating a completion."""

    STOP = "stop"
    """The model emitted an end-of-sequence / stop token."""
    LENGTH = "length"
    """The completion hit the generation cap (truncated)."""
    ABORT = "abort"
    """The engine aborted the request (e.g. preemption); the completion is incomplete."""


@dataclass(slots=True)
class Problem:
    """A problem with a verifiable reference answer."""

    problem_id: str
    prompt: str
    """The user-turn text (before the chat template)."""
    answer: str
    """Reference final answer as text (e.g. `"\\frac{1}{2}"` or `"025"`)."""
    source: str = ""
    """Where it came from, e.g. the file stem `dapo_math_subset`."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Any other fields of the source row, kept verbatim."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Problem:
        return cls(**d)


@dataclass(slots=True)
class SamplingParams:
    """Per-call sampling settings handed to a `GenerateFn` (the engine maps them onto its own type)."""

    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16384
    """Cap on generated (completion) tokens."""
    seed: int | None = None
    """Engine seed for this call; None lets the engine choose."""


@dataclass(slots=True)
class Completion:
    """One sampled continuation, as returned by a `GenerateFn`."""

    token_ids: list[int]  # [num_completion_tokens], includes the EOS token when finish_reason is STOP
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None = None  # [num_completion_tokens], engine log-probs of the sampled tokens


@dataclass(slots=True)
class OffPolicyTrace:
    """A verified-correct trace found by rejection sampling (stage 0), stored as exact generated token ids.

    `prompt_ids` are the exact ids the trace was generated from (user turn + generation prompt), so that a prefixed
    prompt `prompt_ids + trace_ids[:h]` reproduces the sourcing-time boundary. Traces from another model family are
    cut in their own tokens and re-tokenised with the policy tokenizer (`prefixrl.prefixes`).
    """

    trace_id: str
    problem_id: str
    prompt_ids: list[int]  # [num_prompt_tokens]
    trace_ids: list[int]  # [num_trace_tokens]
    text: str
    """Decoded trace text (what the verifier judged)."""
    model: str
    """Name of the model that generated the trace."""
    tokenizer: str
    """Name of the tokenizer the ids belong to; compared with the policy's to detect cross-family traces."""
    num_attempts: int
    """Samples drawn for this problem up to and including the round that found this trace."""
    num_sampled_tokens: int
    """Prompt + completion tokens of all those samples (for FLOP accounting)."""
    attempt_index: int
    """1-based index of this trace among all samples drawn for its problem."""
    verified: bool = True
    logprobs: list[float] | None = None  # [num_trace_tokens], behaviour-policy log-probs (off-policy IS baseline)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OffPolicyTrace:
        return cls(**d)


@dataclass(slots=True)
class PrefixedProblem:
    """A training prompt: a problem, optionally conditioned on the first tokens of a correct trace.

    The prompt fed to the engine is `prompt_ids + prefix_ids`: the user turn with the generation prompt, then the
    prefix as an unfinished assistant turn (no end-of-turn token). An unprefixed problem has empty `prefix_ids`,
    `cut_frac == 0.0` and `trace_id is None`.
    """

    problem: Problem
    prompt_ids: list[int]  # [num_prompt_tokens], user turn + generation prompt
    prefix_ids: list[int]  # [num_prefix_tokens], in the policy's tokenizer
    prefix_text: str
    """Decoded prefix; the reward is judged on prefix_text + completion text."""
    cut_frac: float
    """Cut point as a fraction of the trace's tokens (in the trace's own tokenizer)."""
    trace_id: str | None = None

    @property
    def is_prefixed(self) -> bool:
        return self.trace_id is not None

    @property
    def input_ids(self) -> list[int]:
        """Prompt + prefix ids: what the engine continues from."""
        return self.prompt_ids + self.prefix_ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrefixedProblem:
        d = dict(d)
        d["problem"] = Problem.from_dict(d["problem"])
        return cls(**d)


@dataclass(slots=True)
class Rollout:
    """One on-policy completion of a (possibly prefixed) prompt, with its reward."""

    input_ids: list[int]  # [num_prompt_tokens + num_prefix_tokens], no gradient
    completion_ids: list[int]  # [num_completion_tokens], trained
    text: str
    finish_reason: FinishReason
    reward: float
    logprobs: list[float] | None = None  # [num_completion_tokens], engine log-probs of the sampled tokens


@dataclass(slots=True)
class RolloutGroup:
    """The n rollouts of one prompt; the advantage baseline is computed within a group only."""

    prompt: PrefixedProblem
    rollouts: list[Rollout]

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.rollouts]

    @property
    def is_degenerate(self) -> bool:
        """All rewards equal: zero advantage, no gradient. PrefixRL exists to make these rarer."""
        return len(set(self.rewards)) <= 1
