"""Packing rollouts into training tensors, and the loss mask that implements "no gradient on the prefix".

Shape legend: B = sequences, T = tokens (padded length), G = groups, n = rollouts per group.

Alignment convention (used by every loss in `prefixrl.losses` and by `megatron_ext`):

    tokens_BT[b]      = prompt ids + prefix ids + completion ids, right-padded with pad_id to T
    labels            = tokens shifted left by one: label[b, t] = tokens_BT[b, t + 1]
    logprobs_BT[b, t] = log p(tokens_BT[b, t + 1] | tokens_BT[b, : t + 1])   for t in [0, T - 2]
    the last column (t = T - 1) has no label and is padding (mask 0, logprob 0)

so position t carries the prediction of token t + 1. With P = prompt + prefix length and C = completion length
(completion includes its EOS token), `loss_mask_BT[b, t] = 1` exactly for t in [P - 1, P + C - 2]: the positions
that predict completion tokens. Prompt and prefix tokens are never predicted under the mask, so the prefix gets no
gradient (method notes 2.7); the completion's own EOS is trained. `old_logprobs_BT` uses the same alignment.

The mask is built here, once; losses never special-case prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prefixrl.records import RolloutGroup


def build_loss_mask(prompt_len: int, completion_len: int, total_len: int) -> torch.Tensor:
    """Loss mask of one sequence, shape [total_len], float: 1 where position t predicts a completion token.

    `prompt_len` counts prompt + prefix tokens. Ones sit at [prompt_len - 1, prompt_len + completion_len - 2].
    """
    if prompt_len < 1:
        raise ValueError(f"prompt_len={prompt_len}: a sequence needs at least one prompt token to predict from")
    if completion_len < 0 or prompt_len + completion_len > total_len:
        raise ValueError(
            f"prompt_len={prompt_len} + completion_len={completion_len} does not fit total_len={total_len}"
        )
    mask_T = torch.zeros(total_len, dtype=torch.float32)
    mask_T[prompt_len - 1 : prompt_len + completion_len - 1] = 1.0
    return mask_T


@dataclass(slots=True)
class RLBatch:
    """A right-padded training batch. See the module docstring for the alignment convention.

    Fields:
        tokens_BT: long [B, T], prompt + prefix + completion, padded with pad_id.
        loss_mask_BT: float [B, T], 1 at positions predicting completion tokens.
        advantages_B: float [B], one advantage per sequence.
        seq_lens_B: long [B], real (unpadded) length of each sequence.
        prompt_lens_B: long [B], prompt + prefix length of each sequence.
        old_logprobs_BT: float [B, T] or None, log-probs of the sampled completion tokens under the sampling policy
            (engine) or old trainer policy, aligned like the mask; 0 outside the mask.
    """

    tokens_BT: torch.Tensor
    loss_mask_BT: torch.Tensor
    advantages_B: torch.Tensor
    seq_lens_B: torch.Tensor
    prompt_lens_B: torch.Tensor
    old_logprobs_BT: torch.Tensor | None = None

    @property
    def num_tokens(self) -> torch.Tensor:
        """Number of loss tokens in this batch (a 0-dim tensor; sum it across DP ranks for the global count)."""
        return self.loss_mask_BT.sum()

    @classmethod
    def from_lists(
        cls,
        input_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        advantages: Sequence[float],
        *,
        old_logprobs: Sequence[Sequence[float]] | None = None,
        pad_id: int = 0,
        pad_to_multiple_of: int = 1,
    ) -> RLBatch:
        """Pack plain lists: `input_ids[b]` = prompt + prefix ids, `completion_ids[b]` = sampled ids (with EOS),
        `old_logprobs[b]` = one log-prob per completion token (or None for the whole batch)."""
        num_seqs = len(input_ids)
        if not (num_seqs == len(completion_ids) == len(advantages)) or num_seqs == 0:
            raise ValueError(
                f"need equally many, and at least one, input_ids ({num_seqs}), completion_ids "
                f"({len(completion_ids)}) and advantages ({len(advantages)})"
            )
        if old_logprobs is not None and len(old_logprobs) != num_seqs:
            raise ValueError(f"old_logprobs has {len(old_logprobs)} rows for {num_seqs} sequences")
        seq_lens = [len(p) + len(c) for p, c in zip(input_ids, completion_ids)]
        total_len = -(-max(seq_lens) // pad_to_multiple_of) * pad_to_multiple_of
        tokens_BT = torch.full((num_seqs, total_len), pad_id, dtype=torch.long)
        mask_BT = torch.zeros(num_seqs, total_len, dtype=torch.float32)
        old_BT = None if old_logprobs is None else torch.zeros(num_seqs, total_len, dtype=torch.float32)
        for b, (prompt, completion) in enumerate(zip(input_ids, completion_ids)):
            p, c = len(prompt), len(completion)
            tokens_BT[b, : p + c] = torch.tensor([*prompt, *completion], dtype=torch.long)
            mask_BT[b] = build_loss_mask(p, c, total_len)
            if old_BT is not None:
                assert old_logprobs is not None
                if len(old_logprobs[b]) != c:
                    raise ValueError(
                        f"sequence {b}: {len(old_logprobs[b])} old log-probs for {c} completion tokens; "
                        "pass exactly one log-prob per completion token"
                    )
                old_BT[b, p - 1 : p + c - 1] = torch.tensor(old_logprobs[b], dtype=torch.float32)
        return cls(
            tokens_BT=tokens_BT,
            loss_mask_BT=mask_BT,
            advantages_B=torch.tensor(advantages, dtype=torch.float32),
            seq_lens_B=torch.tensor(seq_lens, dtype=torch.long),
            prompt_lens_B=torch.tensor([len(p) for p in input_ids], dtype=torch.long),
            old_logprobs_BT=old_BT,
        )

    @classmethod
    def from_groups(
        cls, groups: Sequence[RolloutGroup], advantages_Gn: torch.Tensor, *, pad_id: int = 0
    ) -> RLBatch:
        """Flatten rollout groups (row-major: group g, rollout i -> sequence g * n + i) with their advantages.

        Engine log-probs become `old_logprobs_BT` when every rollout has them.
        """
        rollouts = [r for g in groups for r in g.rollouts]
        if advantages_Gn.numel() != len(rollouts):
            raise ValueError(f"advantages_Gn has {advantages_Gn.numel()} entries for {len(rollouts)} rollouts")
        have_logprobs = all(r.logprobs is not None for r in rollouts)
        return cls.from_lists(
            [r.input_ids for r in rollouts],
            [r.completion_ids for r in rollouts],
            advantages_Gn.reshape(-1).tolist(),
            old_logprobs=[r.logprobs for r in rollouts] if have_logprobs else None,  # type: ignore[misc]
            pad_id=pad_id,
        )


def token_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """Log-probs of the next tokens under the module convention, shape [B, T]; the last column is 0.

    Reference (non-vocab-parallel) implementation; `megatron_ext` computes the same quantity over TP shards.
    """
    logprobs_BTV = torch.log_softmax(logits_BTV[:, :-1].float(), dim=-1)
    next_BT = logprobs_BTV.gather(-1, tokens_BT[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(next_BT, (0, 1))
