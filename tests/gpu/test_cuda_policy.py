"""MegatronPolicy on CUDA at TP=1: the dist tier's HF-oracle checks in fp32, and bf16 training steps.

- fp32: log-probs, loss, gradient norm and every gradient equal HF transformers' (an independent fp32 oracle) for the
  prefix-masked REINFORCE loss; the same oracle with prompt + prefix positions unmasked is far off, so the masked
  tokens contribute no gradient. The baselines' mixed losses run on the GPU with their row flags on the CPU.
- bf16: a step is finite, agrees loosely with the oracle and moves every parameter; zero advantages give exactly
  zero gradient; SFT steps lower the loss.
"""

import dataclasses
import math

import pytest
import torch

from megatron_ext import convert, hooks, models
from megatron_ext.models import PrecisionConfig
from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
from prefixrl.batching import token_logprobs
from tests.helpers.hf_models import hf_oracle_grads, rl_batch, save_hf_model, tiny_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_model(tiny_spec("llama", vocab_size=1000), tmp_path_factory.mktemp("m") / "llama", seed=1)


def _policy(hf_dir, *, dtype: str = "float32", lr: float = 1e-4, **kw) -> MegatronPolicy:
    return MegatronPolicy(PolicyConfig(
        model=str(hf_dir), precision=PrecisionConfig(dtype=dtype), micro_batch_size=1, max_seq_len=64,
        optim=OptimizerSettings(lr=lr, warmup_steps=0, clip_grad=0.0), temperature=TEMPERATURE, **kw))


def _grad_errors(policy: MegatronPolicy, ref_grads: dict[str, torch.Tensor]) -> float:
    """Max over tensors of max |grad - ref| / max |ref| (Megatron's DDP gradients, streamed under HF names)."""
    worst = 0.0
    for name, grad in convert.export_hf(policy.model, gradients=True):
        ref = ref_grads[name]
        worst = max(worst, (grad.float().cpu() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12))
    return worst


def _context_unmasked(batch):
    """The same batch with every prompt + prefix position trained too (what the loss mask must prevent)."""
    mask_BT = batch.loss_mask_BT.clone()
    for b, n in enumerate(batch.seq_lens_B.tolist()):
        mask_BT[b, : n - 1] = 1.0
    return dataclasses.replace(batch, loss_mask_BT=mask_BT)


def test_fp32_step_matches_hf_oracle_and_masked_tokens_get_no_gradient(hf_dir, megatron_cuda, device):
    import transformers

    batch = rl_batch(0)
    policy = _policy(hf_dir)
    assert all(p.device == device for p in models.unwrap(policy.model[0]).parameters())
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        ref_lp = token_logprobs(hf(batch.tokens_BT).logits / TEMPERATURE, batch.tokens_BT) * batch.loss_mask_BT
    lp_err = (policy.logprobs(batch) - ref_lp).abs().max().item()
    assert lp_err < 1e-4, f"log-probs differ from the HF full-vocab reference by {lp_err:.3e}"

    ref_grads, ref_loss = hf_oracle_grads(hf_dir, batch, temperature=TEMPERATURE)
    unmasked_grads, _ = hf_oracle_grads(hf_dir, _context_unmasked(batch), temperature=TEMPERATURE)
    m = policy.train_step(batch)
    assert m["train/skipped_nonfinite"] == 0
    assert abs(m["loss/total"] - ref_loss.item()) < 1e-4 * max(1.0, abs(ref_loss.item())), (m, ref_loss)
    ref_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in ref_grads.values())).item()
    assert abs(m["policy/grad_norm"] - ref_norm) < 1e-4 * ref_norm, (m["policy/grad_norm"], ref_norm)
    err, err_unmasked = _grad_errors(policy, ref_grads), _grad_errors(policy, unmasked_grads)
    assert err < 1e-4, f"gradients differ from HF's by {err:.3e} (relative to each tensor's largest)"
    assert err_unmasked > 100 * max(err, 1e-4), f"prompt + prefix positions look trained ({err_unmasked:.3e})"


def _cpu_microbatch(batch) -> hooks.MicroBatch:
    """The whole batch as one CPU micro-batch, for evaluating a LossFn outside Megatron."""
    return hooks.MicroBatch(index_B=torch.arange(batch.tokens_BT.shape[0]), tokens_BT=batch.tokens_BT,
                            labels_BT=torch.nn.functional.pad(batch.tokens_BT[:, 1:], (0, 1)),
                            loss_mask_BT=batch.loss_mask_BT, advantages_B=batch.advantages_B,
                            old_logprobs_BT=batch.old_logprobs_BT)


LOSSES = {
    "reinforce": lambda: hooks.policy_gradient_loss,
    "sft": lambda: hooks.sft_loss,
    "ppo": lambda: hooks.ppo_clipped_loss(),
    "off_policy_is": lambda: hooks.off_policy_is_mixed_loss(torch.tensor([False, True, False, True]),
                                                            torch.tensor([1.0, 0.5, 1.0, 0.25])),
    "luffy": lambda: hooks.luffy_mixed_loss(torch.tensor([False, True, False, True])),
}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_losses_on_gpu_equal_the_loss_evaluated_on_cpu(loss, hf_dir, megatron_cuda):
    loss_fn = LOSSES[loss]()
    policy = _policy(hf_dir)
    batch = rl_batch(1)
    lp_BT = policy.logprobs(batch)
    noise_BT = 0.05 * torch.randn(lp_BT.shape, generator=torch.Generator().manual_seed(0))
    batch = dataclasses.replace(batch, old_logprobs_BT=(lp_BT + noise_BT) * batch.loss_mask_BT)
    expected_sum, _ = loss_fn(lp_BT, _cpu_microbatch(batch))
    expected = expected_sum.item() / batch.num_tokens.item()
    m = policy.train_step(batch, loss=loss_fn)
    assert m["train/skipped_nonfinite"] == 0 and math.isfinite(m["policy/grad_norm"])
    assert abs(m["loss/total"] - expected) < 1e-5 * max(1.0, abs(expected)), (loss, m["loss/total"], expected)


def test_bf16_step_is_finite_close_to_the_oracle_and_moves_every_parameter(hf_dir, megatron_cuda, device):
    batch = rl_batch(0)
    ref_grads, ref_loss = hf_oracle_grads(hf_dir, batch, temperature=TEMPERATURE)
    ref_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in ref_grads.values())).item()
    policy = _policy(hf_dir, dtype="bfloat16", lr=1e-2)
    assert all(p.device == device and p.dtype == torch.bfloat16
               for p in models.unwrap(policy.model[0]).parameters())
    before = policy.parameters_fp32()
    m = policy.train_step(batch)
    assert m["train/skipped_nonfinite"] == 0 and math.isfinite(m["loss/total"])
    assert abs(m["loss/total"] - ref_loss.item()) < 2e-2 * max(1.0, abs(ref_loss.item())), (m, ref_loss)
    assert abs(m["policy/grad_norm"] - ref_norm) < 5e-2 * ref_norm, (m["policy/grad_norm"], ref_norm)
    after = policy.parameters_fp32()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"a bf16 step at lr 1e-2 left these parameters unchanged: {unchanged}"


def test_bf16_zero_advantages_give_exactly_zero_gradient(hf_dir, megatron_cuda):
    batch = dataclasses.replace(rl_batch(2), advantages_B=torch.zeros(4))
    m = _policy(hf_dir, dtype="bfloat16").train_step(batch)
    assert m["policy/grad_norm"] == 0.0 and m["loss/total"] == 0.0, m


def test_bf16_sft_steps_lower_the_loss(hf_dir, megatron_cuda):
    policy = _policy(hf_dir, dtype="bfloat16", lr=1e-3)
    batch = rl_batch(3)
    losses = [policy.train_step(batch, loss=hooks.sft_loss)["loss/total"] for _ in range(5)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5, losses
