"""Single-process runtime and model building: seeds, errors, HF parity at TP=1 (oracle: HF transformers)."""

import json
import os

import pytest
import torch

from megatron_ext import models, runtime
from megatron_ext.spec import ModelSpec, tiny_preset
from tests.helpers.hf_models import hf_logits, save_hf_model, tiny_spec, unmarked_tp_weights

SHARED = "../shared/data/model_configs"


@pytest.fixture
def megatron_tp1():
    runtime.initialize(seed=0)
    yield
    runtime.shutdown()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_hf_parity_tp1(family, tmp_path, megatron_tp1):
    path = save_hf_model(tiny_spec(family, vocab_size=1000), tmp_path / family, seed=3)
    ids = torch.randint(0, 1000, (3, 23), generator=torch.Generator().manual_seed(0))
    out = models.logits(models.from_hf(path), ids)
    ref = hf_logits(path, ids)
    assert out.shape == ref.shape == (3, 23, 1000)
    assert (out - ref).abs().max().item() < 1e-5


def test_loaded_model_marks_its_tensor_parallel_weights(tmp_path, megatron_tp1):
    model = models.from_hf(save_hf_model(tiny_spec("llama"), tmp_path / "m"))[0]
    assert any(n.endswith("linear_qkv.weight") for n, _ in model.named_parameters())
    assert unmarked_tp_weights(model) == []


def test_sharded_checkpoint_with_index(tmp_path, megatron_tp1):
    path = save_hf_model(tiny_spec("llama"), tmp_path / "m", max_shard_size="300KB")
    assert (path / "model.safetensors.index.json").exists()
    ids = torch.randint(0, 512, (1, 9))
    assert (models.logits(models.from_hf(path), ids) - hf_logits(path, ids)).abs().max() < 1e-5


def test_same_seed_same_init(megatron_tp1):
    a = models.build(tiny_preset("tiny-llama"))[0]
    runtime.seed_all(0)
    b = models.build(tiny_preset("tiny-llama"))[0]
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_shutdown_leaves_compat_layer():
    runtime.initialize(seed=0)
    assert torch.cuda.current_device() == "cpu"
    runtime.shutdown()
    with pytest.raises(Exception):
        torch.cuda.current_device()


def test_world_size_must_fit_layout():
    with pytest.raises(ValueError, match="not a multiple"):
        runtime.initialize(tensor_parallel=2)
    assert not runtime.is_initialized()
    assert "MASTER_PORT" not in os.environ


def test_shutdown_removes_the_launcher_variables_it_set(monkeypatch):
    # A one-process run sets RANK/WORLD_SIZE/.../MASTER_PORT itself; left behind, a CLI subprocess started later
    # inherited a MASTER_PORT and failed with EADDRINUSE. Variables set by a launcher stay.
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    runtime.initialize(seed=0)
    assert os.environ["WORLD_SIZE"] == "1" and "MASTER_PORT" in os.environ
    runtime.shutdown()
    assert [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT") if k in os.environ] == []
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"


def test_missing_and_unexpected_tensors_are_listed(tmp_path, megatron_tp1):
    from safetensors.torch import load_file, save_file

    path = save_hf_model(tiny_spec("qwen3"), tmp_path / "m")
    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("model.layers.1.self_attn.k_norm.weight")
    tensors["model.layers.9.mystery.weight"] = torch.zeros(2)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing 1 tensors \['model.layers.1.self_attn.k_norm.weight'\].*"
                                         r"unexpected 1 tensors \['model.layers.9.mystery.weight'\]"):
        models.from_hf(path)


def test_shape_mismatch_names_tensor(tmp_path, megatron_tp1):
    path = save_hf_model(tiny_spec("llama"), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (path / "config.json").write_text(json.dumps(cfg))
    expected = r"different model.*mlp.gate_proj.weight: checkpoint \(512, 256\), config expects \(256, 256\)"
    with pytest.raises(ValueError, match=expected):
        models.from_hf(path)


def test_fp8_without_gpu_fails_clearly(megatron_tp1):
    with pytest.raises(RuntimeError, match="FP8.*no GPU"):
        models.build(tiny_preset("tiny-llama"), precision=models.PrecisionConfig(fp8="e4m3"))


def test_bf16_model_builds_and_runs(megatron_tp1):
    chunks = models.build(tiny_preset("tiny-qwen2"), precision=models.PrecisionConfig(dtype="bfloat16"))
    assert next(chunks[0].parameters()).dtype == torch.bfloat16
    out = models.logits(chunks, torch.randint(0, 512, (1, 5)))
    assert out.shape == (1, 5, 512) and torch.isfinite(out).all()


def test_small_head_dim_rejected_on_cpu(megatron_tp1):
    import dataclasses

    spec = dataclasses.replace(tiny_preset("tiny-llama"), head_dim=16, hidden_size=64)
    with pytest.raises(ValueError, match="head_dim=16"):
        models.build(spec)
