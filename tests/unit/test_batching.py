import pytest
import torch

from prefixrl.batching import RLBatch, build_loss_mask, token_logprobs
from prefixrl.losses import policy_gradient
from prefixrl.records import FinishReason, PrefixedProblem, Problem, Rollout, RolloutGroup


def test_build_loss_mask_positions():
    # 3 prompt+prefix tokens, 2 completion tokens (last one EOS), padded to 7: positions 2 and 3 predict tokens 3, 4
    torch.testing.assert_close(build_loss_mask(3, 2, 7), torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(build_loss_mask(1, 0, 2), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="at least one prompt token"):
        build_loss_mask(0, 2, 4)
    with pytest.raises(ValueError, match="does not fit"):
        build_loss_mask(3, 2, 4)


def test_rlbatch_from_lists_pads_and_aligns():
    batch = RLBatch.from_lists(
        [[10, 11, 12], [20]],  # prompt + prefix ids
        [[13, 2], [21, 22, 2]],  # completions, 2 = EOS
        [1.0, -0.5],
        old_logprobs=[[-0.1, -0.2], [-0.3, -0.4, -0.5]],
        pad_id=0,
        pad_to_multiple_of=4,
    )
    assert batch.tokens_BT.tolist() == [[10, 11, 12, 13, 2, 0, 0, 0], [20, 21, 22, 2, 0, 0, 0, 0]]
    assert batch.loss_mask_BT.tolist() == [[0, 0, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch.old_logprobs_BT is not None
    torch.testing.assert_close(
        batch.old_logprobs_BT,
        torch.tensor([[0, 0, -0.1, -0.2, 0, 0, 0, 0], [-0.3, -0.4, -0.5, 0, 0, 0, 0, 0]]),
    )
    assert batch.seq_lens_B.tolist() == [5, 4] and batch.prompt_lens_B.tolist() == [3, 1]
    torch.testing.assert_close(batch.num_tokens, torch.tensor(5.0))
    # label of every masked position is a completion token
    labels_BT = batch.tokens_BT[:, 1:]
    assert labels_BT[batch.loss_mask_BT[:, :-1].bool()].tolist() == [13, 2, 21, 22, 2]


def test_rlbatch_errors():
    with pytest.raises(ValueError, match="equally many"):
        RLBatch.from_lists([[1]], [[2], [3]], [0.0])
    with pytest.raises(ValueError, match="one log-prob per completion token"):
        RLBatch.from_lists([[1]], [[2, 3]], [0.0], old_logprobs=[[-1.0]])


def test_prefix_tokens_get_no_gradient_through_real_logits():
    """End to end on a tiny 'model': the logits at prompt and prefix positions receive exactly zero gradient."""
    problem = Problem(problem_id="p", prompt="q", answer="1")
    prompt = PrefixedProblem(problem=problem, prompt_ids=[1, 2], prefix_ids=[3, 4], prefix_text="ab", cut_frac=0.5,
                             trace_id="t")
    rollouts = [
        Rollout(input_ids=prompt.input_ids, completion_ids=[5, 0], text="x", finish_reason=FinishReason.STOP,
                reward=1.0, logprobs=[-1.0, -1.0]),
        Rollout(input_ids=prompt.input_ids, completion_ids=[6, 7, 0], text="y", finish_reason=FinishReason.STOP,
                reward=0.0, logprobs=[-1.0, -1.0, -1.0]),
    ]
    group = RolloutGroup(prompt=prompt, rollouts=rollouts)
    batch = RLBatch.from_groups([group], torch.tensor([[0.5, -0.5]]))
    assert batch.old_logprobs_BT is not None
    logits_BTV = torch.randn(2, batch.tokens_BT.shape[1], 8, requires_grad=True)
    logprobs_BT = token_logprobs(logits_BTV, batch.tokens_BT)
    loss, _ = policy_gradient(logprobs_BT, batch.advantages_B, batch.loss_mask_BT, num_tokens=batch.num_tokens)
    loss.backward()
    # positions 0..2 predict prompt/prefix tokens 1..3 (prefix ends at index 3): no gradient there
    assert torch.equal(logits_BTV.grad[:, :3], torch.zeros(2, 3, 8))
    assert logits_BTV.grad[:, 3].abs().sum() > 0  # position 3 predicts the first completion token


def test_token_logprobs_convention():
    logits_BTV = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens_BT = torch.tensor([[0, 2, 1]])
    expected = torch.log(torch.tensor([[0.25, 0.8, 1.0]]))  # last column is padding (log 1 = 0)
    torch.testing.assert_close(token_logprobs(logits_BTV, tokens_BT), expected)
