"""Group-relative advantage estimators (method notes 2.8).

Shape legend: G = groups (one per prompt, i.e. per (problem, prefix) pair), n = rollouts per group.

Each estimator is a small pure function `rewards_Gn -> advantages_Gn`; `ESTIMATORS` maps config names to them.
The baseline is always computed within a group, never across the cuts of one problem. A group whose rewards are all
equal gets zero advantage under every estimator, hence no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

AdvantageFn = Callable[[torch.Tensor], torch.Tensor]


def _check(rewards_Gn: torch.Tensor) -> torch.Tensor:
    if rewards_Gn.dim() != 2:
        raise ValueError(f"rewards must have shape [G, n], got {tuple(rewards_Gn.shape)}")
    return rewards_Gn.float()


def reinforce(rewards_Gn: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a group-mean baseline, the paper's estimator: A_i = r_i - mean_j r_j (mean includes i).

    Setlur et al. 2026, section 3 / method notes 2.8. Returns [G, n].
    """
    rewards_Gn = _check(rewards_Gn)
    return rewards_Gn - rewards_Gn.mean(dim=1, keepdim=True)


def rloo(rewards_Gn: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: A_i = r_i - mean_{j != i} r_j = n / (n - 1) * (r_i - mean_j r_j). Needs n >= 2.

    Ahmadian et al. 2024 (arXiv 2402.14740). Returns [G, n].
    """
    rewards_Gn = _check(rewards_Gn)
    n = rewards_Gn.shape[1]
    if n < 2:
        raise ValueError(f"rloo needs at least 2 rollouts per group, got n={n}; use reinforce for n=1")
    return (rewards_Gn - rewards_Gn.mean(dim=1, keepdim=True)) * (n / (n - 1))


def grpo(rewards_Gn: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (r_i - mean_j r_j) / (std_j r_j + eps), unbiased (n - 1) std as in DeepSeekMath.

    Shao et al. 2024 (arXiv 2402.03300). A group with equal rewards gets 0 (0 / eps). Returns [G, n].
    """
    rewards_Gn = _check(rewards_Gn)
    centered_Gn = rewards_Gn - rewards_Gn.mean(dim=1, keepdim=True)
    std_G1 = rewards_Gn.std(dim=1, keepdim=True) if rewards_Gn.shape[1] > 1 else torch.zeros_like(centered_Gn)
    return centered_Gn / (std_G1 + eps)


def dr_grpo(rewards_Gn: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: GRPO without the std division, A_i = r_i - mean_j r_j.

    Liu et al. 2025 (arXiv 2503.20783). The advantage equals `reinforce`; Dr.GRPO's other change, a constant loss
    normaliser instead of a per-sequence length mean, is the `num_tokens` argument of the losses. Returns [G, n].
    """
    return reinforce(rewards_Gn)


ESTIMATORS: dict[str, AdvantageFn] = {
    "reinforce": reinforce,
    "rloo": rloo,
    "grpo": grpo,
    "dr_grpo": dr_grpo,
}
"""Config name -> estimator. The default is "reinforce" (the paper's)."""


def get_estimator(name: str) -> AdvantageFn:
    """Look up an estimator by config name, with the valid names in the error."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]


def zero_advantage_fraction(rewards_Gn: torch.Tensor) -> torch.Tensor:
    """Share of groups whose rewards are all equal (no learning signal), a 0-dim tensor."""
    rewards_Gn = _check(rewards_Gn)
    return (rewards_Gn.max(dim=1).values == rewards_Gn.min(dim=1).values).float().mean()
