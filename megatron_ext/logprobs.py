"""Token log-probs and entropy from vocab-parallel logits, never gathering the full vocabulary.

Legend: B = sequences, T = tokens, Vs = this TP rank's vocab shard (padded vocab / TP).

Both functions divide the logits by the sampling temperature first, as vLLM does before it reports (processed)
log-probs, and mask Megatron's vocab-padding columns (ids >= the true vocab size) so they take no probability mass.
"""

from __future__ import annotations

import torch

# Padding columns get this logit: exp() of it is exactly 0 after the max shift, and 0 * it stays finite (entropy).
_PAD_LOGIT = -1e9


def _prepare(logits_BTVs: torch.Tensor, *, vocab_size: int, temperature: float) -> torch.Tensor:
    from megatron.core import parallel_state

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    x = logits_BTVs.float() / temperature
    shard = x.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * shard
    if start + shard > vocab_size:
        ids_Vs = torch.arange(start, start + shard, device=x.device)
        x = x.masked_fill(ids_Vs >= vocab_size, _PAD_LOGIT)
    return x


def vocab_parallel_logprobs(logits_BTVs: torch.Tensor, labels_BT: torch.Tensor, *, vocab_size: int,
                            temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[label] per token, [B, T], differentiable, over TP vocab shards."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    x = _prepare(logits_BTVs, vocab_size=vocab_size, temperature=temperature)
    # vocab_parallel_cross_entropy works in place on its input: x is already a fresh tensor.
    return -vocab_parallel_cross_entropy(x.contiguous(), labels_BT)


def vocab_parallel_entropy(logits_BTVs: torch.Tensor, *, vocab_size: int, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per token, [B, T], over TP vocab shards.

    H = log Z - sum(e * (x - m)) / Z with e = exp(x - m), m the global max (a detached stabiliser).
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    x = _prepare(logits_BTVs, vocab_size=vocab_size, temperature=temperature)
    m_BT1 = x.detach().max(dim=-1, keepdim=True).values
    torch.distributed.all_reduce(m_BT1, op=torch.distributed.ReduceOp.MAX,
                                 group=parallel_state.get_tensor_model_parallel_group())
    shifted = x - m_BT1
    e = shifted.exp()
    z_BT = reduce_from_tensor_model_parallel_region(e.sum(-1))
    ez_BT = reduce_from_tensor_model_parallel_region((e * shifted).sum(-1))
    return z_BT.log() - ez_BT / z_BT
