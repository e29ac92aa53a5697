"""Adapters between the rollout engine and the method's protocols (no vLLM import here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefixrl.protocols import Tokenizer
from prefixrl.records import Completion, FinishReason, SamplingParams


class EngineGenerateFn:
    """`prefixrl.protocols.GenerateFn` over a `VLLMEngine`: token ids in, records.Completion (with text) out."""

    def __init__(self, engine: Any, tokenizer: Tokenizer) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.num_generated_tokens = 0

    def __call__(self, prompts: Sequence[Sequence[int]], *, sampling: SamplingParams) -> list[list[Completion]]:
        outs = self.engine.generate([list(p) for p in prompts], n=sampling.n, max_tokens=sampling.max_tokens,
                                    temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed)
        result = []
        for per_prompt in outs:
            row = []
            for c in per_prompt:
                self.num_generated_tokens += len(c.token_ids)
                row.append(Completion(token_ids=list(c.token_ids), text=self.tokenizer.decode(c.token_ids),
                                      finish_reason=FinishReason(c.finish_reason), logprobs=list(c.logprobs)))
            result.append(row)
        return result
