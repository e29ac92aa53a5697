"""Small protocols through which the engine, the tokenizer and verifiers plug into PrefixRL.

The real implementations live elsewhere (`prefixrl.engine.vllm` for `GenerateFn`, a Hugging Face tokenizer for
`Tokenizer`, `prefixrl.rewards.MathVerifier` for `Verifier`); tests pass small scripted fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from prefixrl.records import Completion, FinishReason, Problem, SamplingParams


@runtime_checkable
class GenerateFn(Protocol):
    """Token-id prompts in, `sampling.n` completions with token ids out, per prompt, in prompt order."""

    def __call__(self, prompts: Sequence[Sequence[int]], *, sampling: SamplingParams) -> list[list[Completion]]: ...


@runtime_checkable
class Verifier(Protocol):
    """Judges whether a response text answers a problem correctly (math answer, synthetic task, ...)."""

    def __call__(self, problem: Problem, text: str) -> bool: ...


@runtime_checkable
class RewardFn(Protocol):
    """Scalar reward of a full response (prefix text + completion text) with the way the completion ended."""

    def __call__(self, problem: Problem, text: str, *, finish_reason: FinishReason) -> float: ...


@runtime_checkable
class Tokenizer(Protocol):
    """The subset of the Hugging Face tokenizer interface PrefixRL uses."""

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def apply_chat_template(
        self, conversation: list[dict[str, str]], *, tokenize: bool = ..., add_generation_prompt: bool = ...
    ) -> Any: ...
