"""Megatron data and loss hooks: RLBatch -> micro-batches, `forward_step_func` and `loss_func` for the schedule.

Legend: B = sequences, T = tokens, Vs = vocab shard (padded vocab / TP).

Data hook: sequences are dealt to data-parallel ranks balanced by length (equal counts per rank, as the schedule
needs the same number of micro-batches everywhere), then cut into micro-batches of `micro_batch_size`. With PP > 1
every micro-batch is padded to the batch's longest sequence (the pipeline's p2p buffers have one shape); with PP = 1
each micro-batch is trimmed to its own longest sequence.

Loss hook: the model returns vocab-parallel logits; token log-probs come from a vocab-parallel log-softmax scaled by
the sampling temperature (megatron_ext.logprobs); the loss is a `prefixrl.losses` function evaluated as a *sum*
(num_tokens=1); `loss_func` returns (loss sum, token count, report) and Megatron, run with
`calculate_per_token_loss=True`, divides the gradients by the token count summed over all micro-batches and DP ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_ext import runtime
from megatron_ext.logprobs import vocab_parallel_entropy, vocab_parallel_logprobs
from prefixrl import losses
from prefixrl.batching import RLBatch


@dataclass(slots=True)
class MicroBatch:
    """One micro-batch of one DP rank, aligned as in prefixrl.batching (position t predicts token t + 1)."""

    index_B: torch.Tensor
    """[B] rows of the RLBatch these sequences came from."""
    tokens_BT: torch.Tensor
    labels_BT: torch.Tensor
    """[B, T] tokens shifted left by one (the last column is 0 and masked)."""
    loss_mask_BT: torch.Tensor
    advantages_B: torch.Tensor
    old_logprobs_BT: torch.Tensor | None

    @property
    def position_ids_BT(self) -> torch.Tensor:
        B, T = self.tokens_BT.shape
        return torch.arange(T, device=self.tokens_BT.device).unsqueeze(0).expand(B, T)


def deal_to_ranks(seq_lens_B: torch.Tensor, *, num_ranks: int) -> list[list[int]]:
    """Equal-count, length-balanced assignment: longest first, dealt in a snake order (0..R-1, R-1..0, ...)."""
    order = sorted(range(len(seq_lens_B)), key=lambda i: (-int(seq_lens_B[i]), i))
    ranks: list[list[int]] = [[] for _ in range(num_ranks)]
    for k, i in enumerate(order):
        lap, pos = divmod(k, num_ranks)
        ranks[pos if lap % 2 == 0 else num_ranks - 1 - pos].append(i)
    return [sorted(r) for r in ranks]


def check_batch(batch: RLBatch, *, dp_size: int, micro_batch_size: int, max_seq_len: int) -> None:
    """User errors in a batch, with the fix in the message."""
    B = batch.tokens_BT.shape[0]
    if B == 0:
        raise ValueError("empty batch: a train step needs at least one sequence")
    unit = dp_size * micro_batch_size
    if B % unit:
        raise ValueError(
            f"batch of {B} sequences does not divide over data_parallel={dp_size} x micro_batch_size="
            f"{micro_batch_size}; use a multiple of {unit} (e.g. {max(unit, B // unit * unit)} or {(B // unit + 1) * unit})"
        )
    too_long = [(b, int(n)) for b, n in enumerate(batch.seq_lens_B.tolist()) if n > max_seq_len]
    if too_long:
        b, n = too_long[0]
        raise ValueError(
            f"{len(too_long)} sequences exceed max_seq_len={max_seq_len}; e.g. sequence {b} has {n} tokens "
            f"({n - max_seq_len} too many). Raise optim.max_seq_len or lower rollout.max_new_tokens."
        )


def budgeted_micro_batch_size(batch: RLBatch, *, dp_size: int, micro_batch_size: int,
                              max_tokens_per_microbatch: int | None) -> int:
    """The micro-batch size under a token budget: at most micro_batch_size sequences and at most
    max_tokens_per_microbatch padded tokens (sequences x the batch's longest sequence), rounded down to a divisor of
    the per-rank sequence count. The same on every rank (it depends on the full batch only)."""
    if max_tokens_per_microbatch is None:
        return micro_batch_size
    longest = int(batch.seq_lens_B.max())
    if longest > max_tokens_per_microbatch:
        raise ValueError(f"a {longest}-token sequence does not fit max_tokens_per_microbatch="
                         f"{max_tokens_per_microbatch}; raise the budget to at least {longest}")
    per_rank = batch.tokens_BT.shape[0] // dp_size
    mbs = max(1, min(micro_batch_size, max_tokens_per_microbatch // longest, per_rank))
    while per_rank % mbs:
        mbs -= 1
    return mbs


def make_microbatches(batch: RLBatch, *, dp_rank: int, dp_size: int, micro_batch_size: int, max_seq_len: int,
                      same_length: bool) -> list[MicroBatch]:
    """This DP rank's micro-batches of `batch` (see the module docstring)."""
    check_batch(batch, dp_size=dp_size, micro_batch_size=micro_batch_size, max_seq_len=max_seq_len)
    mine = deal_to_ranks(batch.seq_lens_B, num_ranks=dp_size)[dp_rank]
    global_T = int(batch.seq_lens_B.max())
    device = runtime.device()
    out = []
    for start in range(0, len(mine), micro_batch_size):
        idx_B = torch.tensor(mine[start : start + micro_batch_size], dtype=torch.long)
        T = global_T if same_length else int(batch.seq_lens_B[idx_B].max())
        tokens_BT = batch.tokens_BT[idx_B, :T]
        labels_BT = torch.nn.functional.pad(tokens_BT[:, 1:], (0, 1))
        old = batch.old_logprobs_BT[idx_B, :T] if batch.old_logprobs_BT is not None else None
        out.append(MicroBatch(
            index_B=idx_B, tokens_BT=tokens_BT.to(device), labels_BT=labels_BT.to(device),
            loss_mask_BT=batch.loss_mask_BT[idx_B, :T].to(device), advantages_B=batch.advantages_B[idx_B].to(device),
            old_logprobs_BT=None if old is None else old.to(device),
        ))
    return out


# ------------------------------------------------------------------------------------------------ loss adapters
LossFn = Callable[[torch.Tensor, MicroBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(logprobs_BT, micro-batch) -> (loss *sum* over the micro-batch's loss tokens, metrics)."""


def policy_gradient_loss(logprobs_BT: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE on completion tokens (prefixrl.losses.policy_gradient), the PrefixRL default."""
    return losses.policy_gradient(logprobs_BT, mb.advantages_B, mb.loss_mask_BT, num_tokens=1.0)


def ppo_clipped_loss(clip_low: float = 0.2, clip_high: float = 0.2) -> LossFn:
    """PPO clipped surrogate against the batch's old log-probs."""

    def loss(logprobs_BT: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if mb.old_logprobs_BT is None:
            raise ValueError("ppo_clipped needs old log-probs in the batch (RLBatch.from_lists(..., old_logprobs=))")
        return losses.ppo_clipped(logprobs_BT, mb.old_logprobs_BT, mb.advantages_B, mb.loss_mask_BT, num_tokens=1.0,
                                  clip_low=clip_low, clip_high=clip_high)

    return loss


def sft_loss(logprobs_BT: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token cross-entropy on the masked (assistant) tokens; advantages are ignored."""
    return losses.sft_loss(logprobs_BT, mb.loss_mask_BT, num_tokens=1.0)


def off_policy_is_mixed_loss(off_policy_B: torch.Tensor, sequence_weights_B: torch.Tensor, *,
                             max_weight: float = 1.0) -> LossFn:
    """Importance-weighted off-policy RL (baseline 4 of the method notes) on a batch that mixes on-policy rows
    (REINFORCE) with full correct traces (truncated IS weights against the behaviour log-probs carried in
    `old_logprobs_BT`, times a per-sequence acceptance correction).

    off_policy_B: bool [B_full], sequence_weights_B: float [B_full] (1 on on-policy rows), both over the whole RLBatch.
    """

    def loss(logprobs_BT: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if mb.old_logprobs_BT is None:
            raise ValueError("the off-policy IS loss needs behaviour log-probs in the batch (old_logprobs)")
        # The full-batch tensors may live on the CPU while the micro-batch is on the GPU.
        off_B = off_policy_B[mb.index_B].to(logprobs_BT)
        weights_B = sequence_weights_B[mb.index_B].to(logprobs_BT)
        on, m_on = losses.policy_gradient(logprobs_BT, mb.advantages_B, mb.loss_mask_BT * (1 - off_B)[:, None],
                                          num_tokens=1.0)  # fmt: skip
        off, m_off = losses.off_policy_is_loss(logprobs_BT, mb.old_logprobs_BT, mb.advantages_B,
                                               mb.loss_mask_BT * off_B[:, None], num_tokens=1.0, max_weight=max_weight,
                                               sequence_weights_B=weights_B)  # fmt: skip
        return on + off, {**m_on, **m_off}

    return loss


def luffy_mixed_loss(off_policy_B: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.2,
                     gamma: float = 0.1) -> LossFn:
    """LUFFY (prefixrl.losses.luffy_loss): PPO on on-policy rows, policy shaping on the off-policy trace rows.
    off_policy_B: bool [B_full] over the whole RLBatch; on-policy rows need their engine log-probs."""

    def loss(logprobs_BT: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if mb.old_logprobs_BT is None:
            raise ValueError("the LUFFY loss needs the on-policy rows' engine log-probs in the batch (old_logprobs)")
        return losses.luffy_loss(logprobs_BT, mb.old_logprobs_BT, mb.advantages_B, mb.loss_mask_BT,
                                 off_policy_B[mb.index_B].to(logprobs_BT.device), num_tokens=1.0, clip_low=clip_low,
                                 clip_high=clip_high, gamma=gamma)  # fmt: skip

    return loss


# ------------------------------------------------------------------------------------------------ schedule hooks
def _report(loss_sum: torch.Tensor, metrics: dict[str, torch.Tensor], mb: MicroBatch,
            entropy_BT: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything as token-weighted sums, so micro-batches and DP ranks reduce by plain addition."""
    n = mb.loss_mask_BT.sum()
    report = {"loss/total": loss_sum.detach(), "tokens": n, "policy/entropy": (entropy_BT * mb.loss_mask_BT).sum()}
    for key, value in metrics.items():
        if key == "loss/num_tokens":
            continue
        report[key] = value.detach() if key.startswith("loss/") else value.detach() * n  # losses are sums already
    return report


def train_forward_step(loss_fn: LossFn, *, vocab_size: int, temperature: float) -> Callable:
    """`forward_step_func` for Megatron's schedule: model forward, then the prefix-masked loss on the last stage."""
    from megatron_ext.models import causal_mask

    def forward_step(data_iterator, model):  # noqa: ANN001, ANN202
        mb: MicroBatch = next(data_iterator)
        T = mb.tokens_BT.shape[1]
        output = model(mb.tokens_BT, mb.position_ids_BT, causal_mask(T).to(mb.tokens_BT.device))

        def loss_func(logits_BTVs: torch.Tensor):  # noqa: ANN202
            logprobs_BT = vocab_parallel_logprobs(logits_BTVs, mb.labels_BT, vocab_size=vocab_size,
                                                  temperature=temperature)
            loss_sum, metrics = loss_fn(logprobs_BT, mb)
            with torch.no_grad():
                entropy_BT = vocab_parallel_entropy(logits_BTVs.detach(), vocab_size=vocab_size,
                                                    temperature=temperature)
            return loss_sum, mb.loss_mask_BT.sum().int(), _report(loss_sum, metrics, mb, entropy_BT)

        return output, loss_func

    return forward_step


def logprob_forward_step(*, vocab_size: int, temperature: float) -> Callable:
    """`forward_step_func` for forward-only passes: returns (row indices, token log-probs [B, T]) per micro-batch."""
    from megatron_ext.models import causal_mask

    def forward_step(data_iterator, model):  # noqa: ANN001, ANN202
        mb: MicroBatch = next(data_iterator)
        T = mb.tokens_BT.shape[1]
        output = model(mb.tokens_BT, mb.position_ids_BT, causal_mask(T).to(mb.tokens_BT.device))

        def collect(logits_BTVs: torch.Tensor, non_loss_data: bool = True):  # noqa: ANN202
            logprobs_BT = vocab_parallel_logprobs(logits_BTVs, mb.labels_BT, vocab_size=vocab_size,
                                                  temperature=temperature)
            return mb.index_B, logprobs_BT.detach()

        return output, collect

    return forward_step
