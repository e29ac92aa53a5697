import math

import pytest
import torch

from prefixrl.losses import (
    kl_penalty,
    luffy_loss,
    off_policy_is_loss,
    policy_gradient,
    ppo_clipped,
    sft_loss,
    truncated_is_weights,
)

LOGPROBS_BT = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-0.5, -1.5, 0.0, 0.0]])
MASK_BT = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
ADV_B = torch.tensor([2.0, -1.0])


def test_policy_gradient_value_and_grad():
    logprobs_BT = LOGPROBS_BT.clone().requires_grad_()
    loss, metrics = policy_gradient(logprobs_BT, ADV_B, MASK_BT, num_tokens=4)
    # -(2 * (-2 - 3) + (-1) * (-0.5 - 1.5)) / 4 = -(-10 + 2) / 4
    torch.testing.assert_close(loss, torch.tensor(2.0))
    loss.backward()
    expected_grad = torch.tensor([[0.0, -0.5, -0.5, 0.0], [0.25, 0.25, 0.0, 0.0]])
    torch.testing.assert_close(logprobs_BT.grad, expected_grad)
    assert torch.equal(logprobs_BT.grad[MASK_BT == 0], torch.zeros(4))  # exactly zero on masked tokens
    torch.testing.assert_close(metrics["loss/num_tokens"], torch.tensor(4.0))
    assert not metrics["loss/pg"].requires_grad


def test_policy_gradient_is_weights():
    w_BT = torch.tensor([[1.0, 2.0, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0]])
    loss, _ = policy_gradient(LOGPROBS_BT, ADV_B, MASK_BT, num_tokens=4, is_weights_BT=w_BT)
    # -(2 * (2 * -2 + 0.5 * -3) + (-1) * (-2)) / 4 = -(-11 + 2) / 4
    torch.testing.assert_close(loss, torch.tensor(2.25))


def test_ppo_clipped_hand_computed():
    old_BT = torch.zeros(2, 2)
    logprobs_BT = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]])).requires_grad_()
    mask_BT = torch.ones(2, 2)
    adv_B = torch.tensor([1.0, -1.0])
    loss, metrics = ppo_clipped(logprobs_BT, old_BT, adv_B, mask_BT, num_tokens=4, clip_low=0.2, clip_high=0.2)
    # per token max(-A r, -A clip(r)): [-1.2, -0.5], [1.5, 0.8] -> sum 0.6
    torch.testing.assert_close(loss, torch.tensor(0.15))
    torch.testing.assert_close(metrics["policy/clip_fraction"], torch.tensor(0.5))
    loss.backward()
    # clipped tokens get no gradient; unclipped: d(-A r)/dlogp = -A r, over 4 tokens
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[0.0, -0.125], [0.375, 0.0]]))


def test_ppo_clipped_equals_policy_gradient_on_policy():
    logprobs_BT = LOGPROBS_BT.clone().requires_grad_()
    loss, _ = ppo_clipped(logprobs_BT, LOGPROBS_BT.clone(), ADV_B, MASK_BT, num_tokens=4)
    loss.backward()
    pg_logprobs_BT = LOGPROBS_BT.clone().requires_grad_()
    pg_loss, _ = policy_gradient(pg_logprobs_BT, ADV_B, MASK_BT, num_tokens=4)
    pg_loss.backward()
    # the surrogate values differ (r vs log r) but the gradients agree at ratio 1
    torch.testing.assert_close(logprobs_BT.grad, pg_logprobs_BT.grad)
    torch.testing.assert_close(loss, -(ADV_B[:, None] * MASK_BT).sum() / 4)


def test_ppo_rejects_bad_clip():
    with pytest.raises(ValueError, match="clip_low"):
        ppo_clipped(LOGPROBS_BT, LOGPROBS_BT, ADV_B, MASK_BT, num_tokens=4, clip_low=1.5)


def test_kl_penalty_k3():
    logprobs_BT = torch.tensor([[0.0, math.log(2.0), 5.0]], requires_grad=True)
    ref_BT = torch.zeros(1, 3)
    mask_BT = torch.tensor([[1.0, 1.0, 0.0]])
    loss, metrics = kl_penalty(logprobs_BT, ref_BT, mask_BT, num_tokens=2, coef=0.1)
    k3 = 0.5 + math.log(2.0) - 1.0  # exp(-log 2) + log 2 - 1
    torch.testing.assert_close(loss, torch.tensor(0.1 * k3 / 2))
    torch.testing.assert_close(metrics["policy/kl_ref"], torch.tensor(k3 / 2))
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): 0 at logp = ref, 0.5 at logp = log 2
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[0.0, 0.1 * 0.5 / 2, 0.0]]))


def test_truncated_is_weights():
    trainer_BT = torch.log(torch.tensor([[1.0, 3.0, 0.5, 7.0]]))
    engine_BT = torch.zeros(1, 4)
    mask_BT = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w_BT, metrics = truncated_is_weights(trainer_BT, engine_BT, mask_BT, cap=2.0)
    torch.testing.assert_close(w_BT, torch.tensor([[1.0, 2.0, 0.5, 1.0]]))
    torch.testing.assert_close(metrics["policy/token_mult_prob_error"], torch.tensor((1.0 + 3.0 + 2.0) / 3))
    torch.testing.assert_close(metrics["policy/is_truncated_fraction"], torch.tensor(1 / 3))
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(trainer_BT, engine_BT, mask_BT, cap=0.5)


def test_sft_loss():
    logprobs_BT = LOGPROBS_BT.clone().requires_grad_()
    loss, _ = sft_loss(logprobs_BT, MASK_BT, num_tokens=4)
    torch.testing.assert_close(loss, torch.tensor(7.0 / 4))
    loss.backward()
    torch.testing.assert_close(logprobs_BT.grad, -MASK_BT / 4)


def test_off_policy_is_loss_clips_weights():
    logprobs_BT = torch.log(torch.tensor([[0.5, 0.2]])).requires_grad_()
    behaviour_BT = torch.log(torch.tensor([[0.25, 0.4]]))  # ratios 2 and 0.5
    loss, metrics = off_policy_is_loss(
        logprobs_BT, behaviour_BT, torch.tensor([1.0]), torch.ones(1, 2), num_tokens=2, max_weight=1.0
    )
    torch.testing.assert_close(loss, torch.tensor(-(math.log(0.5) + 0.5 * math.log(0.2)) / 2))
    torch.testing.assert_close(metrics["policy/is_truncated_fraction"], torch.tensor(0.5))
    loss.backward()
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[-0.5, -0.25]]))
    loss_seq, _ = off_policy_is_loss(
        logprobs_BT, behaviour_BT, torch.tensor([1.0]), torch.ones(1, 2), num_tokens=2,
        sequence_weights_B=torch.tensor([0.1]),
    )
    torch.testing.assert_close(loss_seq, 0.1 * loss.detach())


def test_luffy_loss_mixed_group():
    # row 0 on-policy at ratio 1, row 1 off-policy with p = 0.1 -> f(p) = 0.1 / (0.1 + 0.1) = 0.5
    logprobs_BT = torch.log(torch.tensor([[0.3, 0.3], [0.1, 0.1]])).requires_grad_()
    old_BT = torch.log(torch.tensor([[0.3, 0.3], [0.9, 0.9]]))  # ignored on the off-policy row
    adv_B = torch.tensor([1.0, 1.0])
    loss, metrics = luffy_loss(
        logprobs_BT, old_BT, adv_B, torch.ones(2, 2), torch.tensor([False, True]), num_tokens=4, gamma=0.1
    )
    torch.testing.assert_close(loss, torch.tensor((-1.0 - 1.0 - 0.5 - 0.5) / 4))
    torch.testing.assert_close(metrics["policy/off_policy_token_fraction"], torch.tensor(0.5))
    loss.backward()
    # on-policy: d(-r)/dlogp = -1; off-policy: d(-f)/dlogp = -p * gamma / (p + gamma)^2 = -0.25
    torch.testing.assert_close(logprobs_BT.grad, torch.tensor([[-0.25, -0.25], [-0.0625, -0.0625]]))


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda lp, m: policy_gradient(lp, ADV_B, m, num_tokens=3),
        lambda lp, m: ppo_clipped(lp, lp.detach() + 0.1, ADV_B, m, num_tokens=3),
        lambda lp, m: kl_penalty(lp, torch.zeros_like(lp), m, num_tokens=3, coef=1.0),
        lambda lp, m: sft_loss(lp, m, num_tokens=3),
        lambda lp, m: off_policy_is_loss(lp, lp.detach() - 0.1, ADV_B, m, num_tokens=3, max_weight=2.0),
        lambda lp, m: luffy_loss(lp, lp.detach(), ADV_B, m, torch.tensor([False, True]), num_tokens=3),
    ],
)
def test_masked_tokens_get_exactly_zero_gradient(loss_fn):
    logprobs_BT = (torch.randn(2, 4) - 1.0).requires_grad_()
    loss, _ = loss_fn(logprobs_BT, MASK_BT)
    loss.backward()
    assert torch.equal(logprobs_BT.grad[MASK_BT == 0], torch.zeros(4))
    assert (logprobs_BT.grad[MASK_BT == 1] != 0).all()
