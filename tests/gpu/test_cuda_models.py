"""Megatron models on CUDA (local spec: no Transformer Engine here) against HF transformers on the same GPU.

Oracle: the HF model the weights came from (tests/helpers/hf_models.py), run by transformers on the same device.
fp32 logits must match tightly; in bf16 Megatron must be about as close to the fp32 truth as HF's own bf16 run.
"""

import pytest
import torch

from megatron_ext import models
from megatron_ext.spec import tiny_preset
from tests.helpers.hf_models import save_hf_model, tiny_spec, unmarked_tp_weights

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VOCAB = 1000
"""Not a multiple of 128: Megatron pads the vocabulary and models.logits must trim it."""
VARIANTS = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    # head_dim 16 is refused on the CPU only (vLLM's CPU attention); a GPU model with it must build and match.
    "llama-head_dim16": ("llama", dict(head_dim=16, hidden_size=64)),
}
"""Test model name -> (family, tiny_spec overrides)."""


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: save_hf_model(tiny_spec(family, vocab_size=VOCAB, **overrides), root / name, seed=3)
            for name, (family, overrides) in VARIANTS.items()}


def _hf_logits(path, ids_BT: torch.Tensor, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    with torch.no_grad():
        return model(ids_BT.to(device)).logits.float()


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 23), generator=torch.Generator().manual_seed(seed))


def _token_logprobs(logits_BTV: torch.Tensor, ids_BT: torch.Tensor) -> torch.Tensor:
    lp_BTV = torch.log_softmax(logits_BTV[:, :-1].float(), dim=-1)
    return lp_BTV.gather(-1, ids_BT[:, 1:, None].to(lp_BTV.device))[..., 0]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fp32_logits_match_hf_on_the_same_gpu(variant, hf_dirs, device):
    assert not torch.backends.cuda.matmul.allow_tf32, "the fp32 oracle assumes TF32 matmuls are off (the default)"
    path, ids = hf_dirs[variant], _ids()
    chunks = models.from_hf(path, precision=models.PrecisionConfig(dtype="float32"))
    params = list(chunks[0].parameters())
    assert all(p.device == device and p.dtype == torch.float32 for p in params)
    out = models.logits(chunks, ids)
    ref = _hf_logits(path, ids, dtype=torch.float32, device=device)
    assert out.device == device and out.shape == ref.shape == (3, 23, VOCAB)
    err = (out - ref).abs().max().item()
    assert err < 1e-4, f"{variant}: max |logits - HF| = {err:.3e} (scale {ref.abs().max().item():.2f})"
    lp_err = (_token_logprobs(out, ids) - _token_logprobs(ref, ids)).abs().max().item()
    assert lp_err < 1e-4, f"{variant}: max |logprobs - HF| = {lp_err:.3e}"


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_bf16_is_as_close_to_fp32_as_hf_bf16(variant, hf_dirs, device):
    path, ids = hf_dirs[variant], _ids(1)
    chunks = models.from_hf(path, precision=models.PrecisionConfig(dtype="bfloat16"))
    assert all(p.device == device for p in chunks[0].parameters())
    # Megatron's torch RMSNorm (local spec) ignores params_dtype: only the norms keep fp32 weights.
    assert {p.dtype for n, p in chunks[0].named_parameters() if "norm" not in n} == {torch.bfloat16}
    out = models.logits(chunks, ids)
    ref32 = _hf_logits(path, ids, dtype=torch.float32, device=device)
    ref16 = _hf_logits(path, ids, dtype=torch.bfloat16, device=device)
    assert torch.isfinite(out).all()
    err, err_hf = ((out - ref32).abs().max().item(), (ref16 - ref32).abs().max().item())
    # A layout or dtype bug gives errors of the order of the logits themselves; bf16 rounding gives about err_hf.
    assert err < 3 * err_hf + 2e-2, f"{variant}: bf16 Megatron off fp32 HF by {err:.3e}, bf16 HF by {err_hf:.3e}"
    lp, lp32, lp16 = (_token_logprobs(x, ids) for x in (out, ref32, ref16))
    lp_err, lp_err_hf = (lp - lp32).abs().max().item(), (lp16 - lp32).abs().max().item()
    assert lp_err < 3 * lp_err_hf + 2e-2, f"{variant}: logprob error {lp_err:.3e}, HF bf16's {lp_err_hf:.3e}"


def test_loaded_model_marks_its_tensor_parallel_weights(hf_dirs, megatron_cuda):
    model = models.from_hf(hf_dirs["llama"])[0]  # weights drawn on the GPU, then loaded
    assert any(n.endswith("linear_qkv.weight") for n, _ in model.named_parameters())
    assert unmarked_tp_weights(model) == []


def test_without_transformer_engine_the_local_spec_is_built(megatron_cuda):
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    if models.transformer_engine_available():
        pytest.skip("Transformer Engine imports here: the TE spec is the expected one")
    layer = models.build(tiny_preset("tiny-qwen3"))[0].decoder.layers[0]
    assert type(layer.self_attention.linear_qkv) is ColumnParallelLinear
    assert type(layer.mlp.linear_fc2) is RowParallelLinear


def test_fp8_without_transformer_engine_fails_clearly(megatron_cuda):
    if models.transformer_engine_available():
        pytest.skip("Transformer Engine imports here: FP8 is available")
    for fp8 in ("e4m3", "hybrid"):
        with pytest.raises(RuntimeError, match=rf"FP8 \({fp8}\) needs Transformer Engine, which does not import here"):
            models.build(tiny_preset("tiny-llama"), precision=models.PrecisionConfig(fp8=fp8))
