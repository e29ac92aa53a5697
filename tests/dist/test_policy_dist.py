"""MegatronPolicy on 2 ranks over gloo (fp32): gradients and log-probs against an HF full-vocab oracle at TP=2,
PP=2 and DP=2; kill-and-resume is bitwise the uninterrupted run; a TP=2 checkpoint loads at TP=1."""

import pytest
import torch

from tests.helpers.distributed import run_workers


@pytest.mark.parametrize(
    "tp,pp,family,dist_opt",
    [(2, 1, "qwen2", True), (1, 2, "qwen2", True), (1, 2, "llama", False), (1, 1, "qwen3", False),
     (1, 1, "llama", True)],
    ids=["tp2-tied", "pp2-tied", "pp2-llama", "dp2-allreduce", "dp2-distopt"],
)
def test_gradients_and_logprobs_match_hf_oracle(tp, pp, family, dist_opt, tmp_path):
    out = run_workers("grad_parity", tp=tp, pp=pp, family=family, tmp=str(tmp_path),
                      distributed_optimizer=dist_opt)
    assert f"LOGPROBS tp={tp} pp={pp}" in out and f"GRADNORM tp={tp} pp={pp}" in out
    if not dist_opt or (tp * pp) == 2:
        assert f"GRADS tp={tp} pp={pp}" in out


def test_kill_and_resume_is_bitwise_and_reshards(tmp_path):
    common = dict(tmp=str(tmp_path), tp=2)
    run_workers("train_steps", steps=4, resume=False, save_at=-1, tag="full", **common)
    run_workers("train_steps", steps=2, resume=False, save_at=2, tag="part1", **common)  # process exits: "killed"
    run_workers("train_steps", steps=4, resume=True, save_at=-1, tag="part2", **common)
    full, resumed = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "part2.pt")
    assert full["step"] == resumed["step"] == 4
    for name, tensor in full["params"].items():
        assert torch.equal(tensor, resumed["params"][name]), name
    assert full["history"][2:] == resumed["history"]
    # The TP=2 checkpoint (step 2) loads at TP=1 with the logits it loads with at TP=2.
    run_workers("policy_reshard_logits", tmp=str(tmp_path), tp=2)
    run_workers("policy_reshard_logits", tmp=str(tmp_path), tp=1)
    torch.testing.assert_close(torch.load(tmp_path / "logits-tp1.pt"), torch.load(tmp_path / "logits-tp2.pt"),
                               atol=1e-5, rtol=0)
