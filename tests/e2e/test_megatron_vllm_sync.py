"""After a Megatron optimizer step at TP=2 or PP=2 (2 ranks), the weight-sync stream loaded into a real vLLM engine
with `update_weights` gives vLLM log-probs equal to the Megatron policy's for the tokens vLLM samples (fp32)."""

import json
import os

import pytest

from tests.helpers.distributed import run_workers
from tests.helpers.engine_refs import load_state

pytestmark = pytest.mark.vllm

PROMPTS = [[2, 17, 99, 250, 31], [2, 400, 7], [2, 5, 6, 7, 8, 9, 10, 11, 12]]


@pytest.mark.parametrize("tp,pp,family", [(2, 1, "qwen2"), (1, 2, "qwen3"), (2, 1, "llama")],
                         ids=["tp2-qwen2-tied", "pp2-qwen3", "tp2-llama"])
def test_stepped_megatron_weights_sync_into_vllm(tp, pp, family, tmp_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from prefixrl.engine.vllm import VLLMEngine

    run_workers("policy_step_and_export", tmp=str(tmp_path), tp=tp, pp=pp, family=family)
    engine = VLLMEngine(tmp_path / f"hf-{family}", max_model_len=64, seed=0)
    try:
        engine.update_weights(iter(load_state(tmp_path / "after").items()))
        outs = engine.generate(PROMPTS, n=2, max_tokens=8, temperature=1.0, seed=0)
    finally:
        engine.shutdown()
    prompts = [p for p, per in zip(PROMPTS, outs) for _ in per]
    completions = [c.token_ids for per in outs for c in per]
    logprobs = [c.logprobs for per in outs for c in per]
    (tmp_path / "engine.json").write_text(json.dumps({"prompts": prompts, "completions": completions,
                                                      "logprobs": logprobs}))
    out = run_workers("policy_score", tmp=str(tmp_path), tp=tp, pp=pp, family=family)
    assert f"SYNC {family} tp={tp} pp={pp}" in out


def test_colocated_engine_inside_torchrun_ranks(tmp_path):
    """vLLM's external_launcher backend inside the 2-rank Megatron TP=2 processes (the colocated multi-rank layout)."""
    out = run_workers("colocated_engine_sync", tmp=str(tmp_path), engine_tp=2)
    assert "COLOCATED megatron_tp=2 engine_tp=2" in out
