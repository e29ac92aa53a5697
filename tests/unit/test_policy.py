"""MegatronPolicy in one process (TP=1, fp32): micro-batch invariance, masked tokens, SFT, non-finite guard, errors."""

import dataclasses

import pytest
import torch

from megatron_ext import runtime
from megatron_ext.hooks import deal_to_ranks, sft_loss
from megatron_ext.policy import MegatronPolicy, NonFiniteError, OptimizerSettings, PolicyConfig, latest_checkpoint
from prefixrl.batching import RLBatch
from tests.helpers.hf_models import save_hf_model, tiny_spec


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_model(tiny_spec("llama", num_layers=2), tmp_path_factory.mktemp("m") / "llama", seed=2)


@pytest.fixture
def megatron():
    runtime.initialize(seed=0)
    yield
    runtime.shutdown()


def _policy(hf_dir, **kw):
    optim = OptimizerSettings(lr=1e-3, warmup_steps=0, clip_grad=0.0)
    return MegatronPolicy(PolicyConfig(model=str(hf_dir), optim=optim, max_seq_len=64, **kw))


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 512, (int(k),), generator=g).tolist() for k in torch.randint(2, 9, (n,), generator=g)]
    comps = [torch.randint(4, 512, (int(k),), generator=g).tolist() for k in torch.randint(1, 9, (n,), generator=g)]
    return RLBatch.from_lists(prompts, comps, torch.randn(n, generator=g).tolist())


def test_microbatch_invariance(hf_dir, megatron):
    batch = _batch()
    results = [_policy(hf_dir, micro_batch_size=mbs).train_step(batch) for mbs in (1, 2, 4)]
    for r in results[1:]:
        assert abs(r["loss/total"] - results[0]["loss/total"]) < 1e-6
        assert abs(r["policy/grad_norm"] - results[0]["policy/grad_norm"]) < 1e-5


def test_token_budget_sets_micro_batch_size_without_changing_the_step(hf_dir, megatron):
    from megatron_ext.hooks import budgeted_micro_batch_size

    batch = _batch()
    longest = int(batch.seq_lens_B.max())
    assert budgeted_micro_batch_size(batch, dp_size=1, micro_batch_size=4, max_tokens_per_microbatch=2 * longest) == 2
    assert budgeted_micro_batch_size(batch, dp_size=1, micro_batch_size=4, max_tokens_per_microbatch=3 * longest) == 2
    with pytest.raises(ValueError, match="raise the budget"):
        budgeted_micro_batch_size(batch, dp_size=1, micro_batch_size=4, max_tokens_per_microbatch=longest - 1)
    plain = _policy(hf_dir, micro_batch_size=4).train_step(batch)
    budget = _policy(hf_dir, micro_batch_size=4, max_tokens_per_microbatch=longest).train_step(batch)
    assert abs(plain["loss/total"] - budget["loss/total"]) < 1e-6
    assert abs(plain["policy/grad_norm"] - budget["policy/grad_norm"]) < 1e-5


def test_tokens_after_completion_have_no_influence(hf_dir, megatron):
    batch = _batch(1)
    altered = dataclasses.replace(batch, tokens_BT=batch.tokens_BT.clone())
    for b, n in enumerate(batch.seq_lens_B.tolist()):
        altered.tokens_BT[b, n:] = 7  # padding after the completion: causally after every loss position
    a, b = _policy(hf_dir), _policy(hf_dir)
    ma, mb = a.train_step(batch), b.train_step(altered)
    assert ma["loss/total"] == mb["loss/total"] and ma["policy/grad_norm"] == mb["policy/grad_norm"]


def test_zero_advantage_group_gives_zero_gradient(hf_dir, megatron):
    batch = dataclasses.replace(_batch(2), advantages_B=torch.zeros(4))
    policy = _policy(hf_dir)
    before = policy.parameters_fp32()
    m = policy.train_step(batch)
    assert m["policy/grad_norm"] == 0.0
    after = policy.parameters_fp32()
    assert all(torch.allclose(before[k], after[k], atol=1e-3 * 0.011) for k in before)  # weight decay only


def test_sft_step_lowers_loss(hf_dir, megatron):
    policy = _policy(hf_dir, micro_batch_size=2)
    batch = _batch(3)
    losses = [policy.train_step(batch, loss=sft_loss)["loss/total"] for _ in range(5)]
    assert losses[-1] < losses[0] - 0.5, losses


def test_set_lr_switches_a_running_schedule(hf_dir, megatron):
    policy = _policy(hf_dir, micro_batch_size=2)
    assert policy.train_step(_batch(3), loss=sft_loss)["train/lr"] == pytest.approx(1e-3)
    policy.set_lr(2e-5)
    assert policy.train_step(_batch(3), loss=sft_loss)["train/lr"] == pytest.approx(2e-5)
    with pytest.raises(ValueError, match="lr=0"):
        policy.set_lr(0)


def test_nonfinite_steps_are_skipped_then_fail(hf_dir, megatron):
    policy = _policy(hf_dir)
    bad = dataclasses.replace(_batch(4), advantages_B=torch.tensor([1.0, float("nan"), 0.0, 1.0]))
    before = policy.parameters_fp32()
    m = policy.train_step(bad)
    assert m["train/skipped_nonfinite"] == 1
    assert all(torch.equal(before[k], v) for k, v in policy.parameters_fp32().items())
    policy.train_step(_batch(5))  # a good step resets the streak
    policy.train_step(bad)
    policy.train_step(bad)
    with pytest.raises(NonFiniteError, match="3 consecutive"):
        policy.train_step(bad)


def test_batch_errors(hf_dir, megatron):
    policy = _policy(hf_dir, micro_batch_size=2)
    with pytest.raises(ValueError, match="use a multiple of 2"):
        policy.train_step(_batch(0, n=3))
    long = RLBatch.from_lists([[5] * 60], [[6] * 10], [1.0])
    with pytest.raises(ValueError, match="max_seq_len=64.*70 tokens \\(6 too many\\)"):
        _policy(hf_dir).train_step(long)


def test_checkpoint_errors(hf_dir, megatron, tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path)
    (tmp_path / ".iter_0000001.tmp").mkdir()  # a save killed half-way is ignored
    (tmp_path / "iter_0000001").mkdir()  # no "complete" marker
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path)
    policy = _policy(hf_dir)
    policy.train_step(_batch())
    saved = policy.save(tmp_path / "ck", extra={"cursor": 1})
    assert latest_checkpoint(tmp_path / "ck") == saved
    other = save_hf_model(tiny_spec("llama", num_layers=2, intermediate_size=256), tmp_path / "other")
    with pytest.raises(ValueError, match="different model shape"):
        _policy(other).load(tmp_path / "ck")


def test_deal_to_ranks_is_balanced():
    lens = torch.tensor([10, 1, 9, 2, 8, 3, 7, 4])
    ranks = deal_to_ranks(lens, num_ranks=2)
    assert sorted(sum(ranks, [])) == list(range(8)) and len(ranks[0]) == len(ranks[1]) == 4
    assert abs(int(lens[ranks[0]].sum()) - int(lens[ranks[1]].sum())) <= 2
