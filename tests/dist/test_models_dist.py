"""Models and conversion on 2 ranks over gloo: HF parity at TP=2 and PP=2, bitwise export/import, resharding."""

import pytest

from tests.helpers.distributed import run_workers

FAMILIES = ["llama", "qwen2", "qwen3"]


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_hf_parity_and_bitwise_roundtrip(tp, pp, tmp_path):
    out = run_workers("parity_and_roundtrip", tp=tp, pp=pp, families=FAMILIES, tmp=str(tmp_path))
    for family in FAMILIES:
        assert f"PARITY {family} tp={tp} pp={pp}" in out
        assert f"ROUNDTRIP {family} tp={tp} pp={pp} ok" in out


@pytest.mark.parametrize("src_tp,dst_tp", [(2, 1), (1, 2)])
def test_megatron_checkpoint_reshards(src_tp, dst_tp, tmp_path):
    run_workers("save_megatron_checkpoint_at", family="qwen2", tmp=str(tmp_path), tp=src_tp)
    out = run_workers("load_megatron_checkpoint_at", tmp=str(tmp_path), src_tp=src_tp, tp=dst_tp)
    assert f"RESHARD tp{src_tp}->tp{dst_tp}" in out
