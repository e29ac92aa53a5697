"""Vocab-parallel log-probs and entropy (megatron_ext.logprobs) at TP=1 on CUDA against a full-vocab log_softmax.

The logits carry Megatron's vocab padding (1000 real columns of 1024) with large values in the padding columns, which
must get no probability mass and no gradient.
"""

import pytest
import torch

from megatron_ext.logprobs import vocab_parallel_entropy, vocab_parallel_logprobs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VOCAB, PADDED = 1000, 1024


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logprobs_entropy_and_gradients_match_full_vocab(dtype, temperature, device):
    g = torch.Generator().manual_seed(0)
    logits_BTV = (3 * torch.randn(2, 7, PADDED, generator=g)).to(dtype)
    logits_BTV[..., VOCAB:] = 50.0
    labels_BT = torch.randint(0, VOCAB, (2, 7), generator=g)
    weights_BT = torch.randn(2, 7, generator=g).to(device)
    mine = logits_BTV.to(device).clone().requires_grad_(True)
    ref = logits_BTV.to(device).clone().requires_grad_(True)

    lp_BT = vocab_parallel_logprobs(mine, labels_BT.to(device), vocab_size=VOCAB, temperature=temperature)
    ref_BTV = torch.log_softmax(ref[..., :VOCAB].float() / temperature, dim=-1)
    ref_BT = ref_BTV.gather(-1, labels_BT.to(device)[..., None])[..., 0]
    assert lp_BT.device == device and lp_BT.dtype == torch.float32 and lp_BT.shape == (2, 7)
    torch.testing.assert_close(lp_BT, ref_BT, atol=1e-5, rtol=1e-5)

    entropy_BT = vocab_parallel_entropy(mine.detach(), vocab_size=VOCAB, temperature=temperature)
    torch.testing.assert_close(entropy_BT, -(ref_BTV.exp() * ref_BTV).sum(-1).detach(), atol=1e-4, rtol=1e-5)

    (lp_BT * weights_BT).sum().backward()
    (ref_BT * weights_BT).sum().backward()
    assert mine.grad.dtype == dtype and mine.grad[..., VOCAB:].abs().max().item() == 0.0
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else {}  # bf16: assert_close's bf16 defaults
    torch.testing.assert_close(mine.grad, ref.grad, **tol)
