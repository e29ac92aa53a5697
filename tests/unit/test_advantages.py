import math

import pytest
import torch

from prefixrl.advantages import ESTIMATORS, dr_grpo, get_estimator, grpo, reinforce, rloo, zero_advantage_fraction
from prefixrl.losses import policy_gradient

REWARDS_GN = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_reinforce_hand_computed():
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.5, 0.5, -0.5, -0.5]])
    torch.testing.assert_close(reinforce(REWARDS_GN), expected)
    torch.testing.assert_close(dr_grpo(REWARDS_GN), expected)


def test_rloo_hand_computed():
    # r_i - mean of the other three
    expected = torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [2 / 3, 2 / 3, -2 / 3, -2 / 3]])
    torch.testing.assert_close(rloo(REWARDS_GN), expected)


def test_grpo_hand_computed():
    # unbiased std: group 0 -> sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; group 1 -> sqrt(1/3)
    s = 1 / math.sqrt(3)
    expected = torch.tensor([[1.5, -0.5, -0.5, -0.5], [0.5 / s, 0.5 / s, -0.5 / s, -0.5 / s]])
    torch.testing.assert_close(grpo(REWARDS_GN, eps=0.0), expected)
    assert grpo(REWARDS_GN).shape == (2, 4)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_equal_rewards_give_zero_advantage_and_zero_gradient(name):
    rewards_Gn = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    adv_Gn = get_estimator(name)(rewards_Gn)
    torch.testing.assert_close(adv_Gn, torch.zeros(2, 3))
    logprobs_BT = torch.randn(6, 5, requires_grad=True)
    loss, _ = policy_gradient(logprobs_BT, adv_Gn.reshape(-1), torch.ones(6, 5), num_tokens=30)
    loss.backward()
    assert torch.equal(logprobs_BT.grad, torch.zeros(6, 5))


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        reinforce(torch.zeros(4))
    with pytest.raises(ValueError, match="n=1"):
        rloo(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="choose one of"):
        get_estimator("ppo")


def test_zero_advantage_fraction():
    rewards_Gn = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(zero_advantage_fraction(rewards_Gn), torch.tensor(0.5))
