import json

import pytest

from conftest import DATA
from prefixrl.flops import FlopCounter, non_embedding_params


def _config(name):
    return json.loads((DATA / "model_configs" / name / "config.json").read_text())


def test_non_embedding_params_llama_8b():
    # per layer: q 4096*4096 + k,v 2*4096*1024 + o 4096*4096 + mlp 3*4096*14336 + 2 norms 2*4096; plus final norm
    per_layer = 4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert non_embedding_params(_config("Llama-3.1-8B-Instruct")) == 32 * per_layer + 4096
    # the published total, 8.03B, minus input and output embeddings (2 * 128256 * 4096)
    published = 8.03e9 - 2 * 128256 * 4096
    assert non_embedding_params(_config("Llama-3.1-8B-Instruct")) == pytest.approx(published, rel=2e-3)


def test_non_embedding_params_qwen():
    qwen3 = non_embedding_params(_config("Qwen3-8B"))  # head_dim 128 with 32 heads, q/k norms
    per_layer = 4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 12288 + 2 * 4096 + 2 * 128
    assert qwen3 == 36 * per_layer + 4096
    qwen2 = _config("Qwen2.5-7B-Instruct")
    h, kv = qwen2["hidden_size"], qwen2["num_key_value_heads"] * (qwen2["hidden_size"] // qwen2["num_attention_heads"])
    with_bias = non_embedding_params(qwen2)
    assert with_bias - non_embedding_params({**qwen2, "model_type": "llama"}) == qwen2["num_hidden_layers"] * (
        h + 2 * kv
    )
    with pytest.raises(ValueError, match="model_type"):
        non_embedding_params({"model_type": "mixtral"})


def test_flop_counter_buckets_and_round_trip():
    counter = FlopCounter(num_params=1000)
    counter.add_sourcing(100, solved=True)
    counter.add_sourcing(50, solved=False)
    counter.add_sampling(30)  # prompt + prefix + completion tokens of rollouts
    counter.add_training(30)
    counter.add_forward_only(10)
    assert counter.sourcing == 2 * 1000 * 150 and counter.sourcing_unsolved == 2 * 1000 * 50
    assert counter.total(include_sourcing=False) == 1000 * (2 * 30 + 6 * 30 + 2 * 10)
    assert counter.total() == counter.total(include_sourcing=False) + 300_000
    assert counter.total(include_unsolved=False) == counter.total() - 100_000
    restored = FlopCounter.from_dict(json.loads(json.dumps(counter.to_dict())))
    assert restored == counter
    assert restored.metrics()["perf/flops_total"] == counter.total()
    with pytest.raises(ValueError, match="num_tokens"):
        counter.add_training(-1)
    with pytest.raises(ValueError, match="num_params"):
        FlopCounter(num_params=0)
