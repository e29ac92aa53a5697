"""Architecture records from real config.json files: parsing, layout validation, parameter counts."""

import pytest

from megatron_ext.spec import ModelSpec, tiny_preset

SHARED = "../shared/data/model_configs"


def test_real_configs_parse():
    llama = ModelSpec.from_pretrained(f"{SHARED}/Llama-3.1-8B-Instruct")
    assert llama.family == "llama" and llama.rope_scaling["rope_type"] == "llama3" and llama.num_kv_heads == 8
    assert 8.0e9 < llama.num_params() < 8.1e9  # published: 8.03B
    qwen3 = ModelSpec.from_pretrained(f"{SHARED}/Qwen3-8B")
    assert qwen3.qk_norm and qwen3.head_dim == 128 and not qwen3.qkv_bias
    qwen25 = ModelSpec.from_pretrained(f"{SHARED}/Qwen2.5-7B-Instruct")
    assert qwen25.qkv_bias and qwen25.family == "qwen2"
    seventy = ModelSpec.from_pretrained(f"{SHARED}/Llama-3.1-70B-Instruct")
    assert 70.0e9 < seventy.num_params() < 71.0e9  # published: 70.6B


def test_unsupported_architecture_names_supported_ones():
    with pytest.raises(ValueError, match="MixtralForCausalLM.*LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        ModelSpec.from_hf_config({"architectures": ["MixtralForCausalLM"]})


def test_tp_and_pp_validation_names_valid_sizes():
    spec = ModelSpec.from_pretrained(f"{SHARED}/Llama-3.1-8B-Instruct")
    spec.check_parallel(tensor_parallel=8, pipeline_parallel=4)
    with pytest.raises(ValueError, match=r"tensor parallel size 3 .* use one of \[1, 2, 4, 8\]"):
        spec.check_parallel(tensor_parallel=3, pipeline_parallel=1)
    with pytest.raises(ValueError, match=r"pipeline parallel size 5 does not divide num_layers=32"):
        spec.check_parallel(tensor_parallel=1, pipeline_parallel=5)


def test_vocab_padding():
    spec = tiny_preset("tiny-llama")
    assert spec.padded_vocab_size(tensor_parallel=1) == 512
    assert spec.padded_vocab_size(tensor_parallel=8) == 1024
    qwen = ModelSpec.from_pretrained(f"{SHARED}/Qwen3-8B")
    padded = qwen.padded_vocab_size(tensor_parallel=8)
    assert padded % (128 * 8) == 0 and 0 <= padded - qwen.vocab_size < 128 * 8


def test_hf_config_roundtrip():
    for name in ("tiny-llama", "tiny-qwen2", "tiny-qwen3"):
        spec = tiny_preset(name)
        assert ModelSpec.from_hf_config(spec.to_hf_config()) == spec
