"""Policy losses for PrefixRL and its baselines: pure functions returning `(loss, metrics)`.

Shape legend: B = sequences, T = tokens. Every `*_BT` tensor follows the alignment of `prefixrl.batching`:
position t holds the log-prob of token t + 1, and `loss_mask_BT` is 1 only at positions predicting completion
tokens, so prompt and prefix tokens get no gradient without any special case here (method notes 2.7).

Every loss divides a token sum by `num_tokens`, a count passed in (e.g. the global number of completion tokens of
the step across DP ranks and micro-batches, or a constant for Dr.GRPO), so gradient accumulation equals one big
batch. Metrics are sums or means of detached tensors, computed under `torch.no_grad()`; nothing calls `.item()`.

Compose variants by adding losses: e.g. `ppo_clipped(...)[0] + kl_penalty(...)[0]`, with `truncated_is_weights`
feeding `is_weights_BT` for the trainer/engine mismatch correction.
"""

from __future__ import annotations

import torch

Metrics = dict[str, torch.Tensor]

# exp() of a log-ratio above this overflows float32 (exp(88.7) ~ 3.4e38); clamp before exponentiating.
_MAX_LOG_RATIO = 80.0


def _masked_sum(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return (x_BT * mask_BT).sum()


def _masked_mean(x_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    return (x_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0)


def _ratio(logprobs_BT: torch.Tensor, ref_logprobs_BT: torch.Tensor) -> torch.Tensor:
    return torch.exp((logprobs_BT - ref_logprobs_BT).clamp(max=_MAX_LOG_RATIO))


def _clipped_surrogate(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO loss max(-A r, -A clip(r)), the ratio r, and where the clipped branch is active (all [B, T])."""
    if not (0.0 <= clip_low < 1.0 and clip_high >= 0.0):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    adv_BT = advantages_B.detach()[:, None].expand_as(logprobs_BT)
    ratio_BT = _ratio(logprobs_BT, old_logprobs_BT.detach())
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * ratio_BT.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped_BT, clipped_BT), ratio_BT, (clipped_BT > unclipped_BT).detach()


def policy_gradient(
    logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    *,
    num_tokens: torch.Tensor | float,
    is_weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE policy-gradient loss, the paper's default (method notes 2.8):

        loss = -sum_{b,t} w[b,t] * A[b] * logp[b,t] * mask[b,t] / num_tokens

    Args:
        logprobs_BT: [B, T] current-policy log-probs (with grad).
        advantages_B: [B] per-sequence advantages (no grad).
        loss_mask_BT: [B, T] 1 on completion positions.
        num_tokens: normaliser (global completion-token count, or a constant).
        is_weights_BT: optional [B, T] detached token weights (truncated IS correction); 1 when None.
    """
    weights_BT = advantages_B.detach()[:, None].expand_as(logprobs_BT)
    if is_weights_BT is not None:
        weights_BT = weights_BT * is_weights_BT.detach()
    loss = -_masked_sum(weights_BT * logprobs_BT, loss_mask_BT) / num_tokens
    with torch.no_grad():
        metrics = {
            "loss/pg": loss.detach(),
            "loss/num_tokens": loss_mask_BT.sum(),
            "policy/mean_logprob": _masked_mean(logprobs_BT.detach(), loss_mask_BT),
        }
    return loss, metrics


def ppo_clipped(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    *,
    num_tokens: torch.Tensor | float,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    is_weights_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017), with asymmetric bounds (DAPO's clip-higher):

        r = exp(logp - old_logp)
        loss = sum_{b,t} w * max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) * mask / num_tokens

    With one optimizer update per batch, old_logp == logp, r == 1 and this equals `policy_gradient` in value and
    gradient. Args as in `policy_gradient`, plus old_logprobs_BT: [B, T] log-probs of the policy that sampled.
    """
    loss_BT, ratio_BT, is_clipped_BT = _clipped_surrogate(
        logprobs_BT, old_logprobs_BT, advantages_B, clip_low=clip_low, clip_high=clip_high
    )
    if is_weights_BT is not None:
        loss_BT = loss_BT * is_weights_BT.detach()
    loss = _masked_sum(loss_BT, loss_mask_BT) / num_tokens
    with torch.no_grad():
        metrics = {
            "loss/ppo": loss.detach(),
            "loss/num_tokens": loss_mask_BT.sum(),
            "policy/ratio_mean": _masked_mean(ratio_BT.detach(), loss_mask_BT),
            "policy/clip_fraction": _masked_mean(is_clipped_BT.float(), loss_mask_BT),
        }
    return loss, metrics


def kl_penalty(
    logprobs_BT: torch.Tensor,
    ref_logprobs_BT: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    *,
    num_tokens: torch.Tensor | float,
    coef: float,
) -> tuple[torch.Tensor, Metrics]:
    """KL(pi || pi_ref) penalty with the k3 estimator (Schulman 2020), to add to a policy loss:

        k3 = exp(ref - logp) - (ref - logp) - 1   (>= 0, unbiased for KL under samples from pi)
        loss = coef * sum(k3 * mask) / num_tokens

    The paper's default coef is 0 (no KL). Args: [B, T] log-probs of the policy (with grad) and the frozen
    reference (no grad), the mask, the normaliser and the coefficient.
    """
    log_ratio_BT = (ref_logprobs_BT.detach() - logprobs_BT).clamp(max=_MAX_LOG_RATIO)
    k3_BT = torch.exp(log_ratio_BT) - log_ratio_BT - 1.0
    kl = _masked_sum(k3_BT, loss_mask_BT) / num_tokens
    with torch.no_grad():
        metrics = {"policy/kl_ref": _masked_mean(k3_BT.detach(), loss_mask_BT)}
    return coef * kl, metrics


def truncated_is_weights(
    trainer_logprobs_BT: torch.Tensor,
    engine_logprobs_BT: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    *,
    cap: float = 2.0,
) -> tuple[torch.Tensor, Metrics]:
    """Truncated importance weights for the trainer/engine log-prob mismatch (Yao et al. 2025, "TIS"):

        w[b,t] = min(exp(logp_trainer_old - logp_engine), cap)

    Both inputs are [B, T] log-probs of the sampled tokens under the policy weights that sampled them, computed by
    the trainer and by the engine. Returns detached weights [B, T] (1 outside the mask) and metrics including
    `token_mult_prob_error` = masked mean of exp(|logp_trainer - logp_engine|), which is 1 when both agree.
    Prefix tokens were not sampled and have no engine log-probs; the mask excludes them.
    """
    if cap < 1.0:
        raise ValueError(f"cap={cap} would down-weight agreeing tokens; use cap >= 1 (e.g. 2.0)")
    with torch.no_grad():
        diff_BT = (trainer_logprobs_BT - engine_logprobs_BT) * loss_mask_BT
        weights_BT = torch.exp(diff_BT.clamp(max=_MAX_LOG_RATIO)).clamp(max=cap)
        metrics = {
            "policy/token_mult_prob_error": _masked_mean(torch.exp(diff_BT.abs()), loss_mask_BT),
            "policy/is_weight_mean": _masked_mean(weights_BT, loss_mask_BT),
            "policy/is_truncated_fraction": _masked_mean((weights_BT >= cap).float(), loss_mask_BT),
        }
    return weights_BT, metrics


def sft_loss(
    logprobs_BT: torch.Tensor, loss_mask_BT: torch.Tensor, *, num_tokens: torch.Tensor | float
) -> tuple[torch.Tensor, Metrics]:
    """Next-token cross-entropy on full traces (SFT-then-RL baseline, method notes 4.3):

        loss = -sum(logp * mask) / num_tokens

    logprobs_BT: [B, T] log-probs of the trace tokens; loss_mask_BT: [B, T] 1 on assistant (trace) positions.
    """
    loss = -_masked_sum(logprobs_BT, loss_mask_BT) / num_tokens
    with torch.no_grad():
        metrics = {"loss/sft": loss.detach(), "loss/num_tokens": loss_mask_BT.sum()}
    return loss, metrics


def off_policy_is_loss(
    logprobs_BT: torch.Tensor,
    behaviour_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    *,
    num_tokens: torch.Tensor | float,
    max_weight: float = 1.0,
    sequence_weights_B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Importance-weighted off-policy policy gradient on full traces (baseline 4.4 of the method notes):

        w[b,t] = min(pi_theta(y_t) / pi_0(y_t), max_weight)   (detached)
        loss = -sum_{b,t} s[b] * w[b,t] * A[b] * logp[b,t] * mask / num_tokens

    The gradient of w * logp equals the gradient of the ratio where it is not truncated. `sequence_weights_B`
    (s, default 1) carries the rejection-sampling acceptance correction p_x ~ 1 / attempts.
    Args: [B, T] policy log-probs (grad), [B, T] behaviour log-probs recorded at sourcing, [B] advantages, mask.
    """
    weights_BT = _ratio(logprobs_BT.detach(), behaviour_logprobs_BT.detach()).clamp(max=max_weight)
    scale_BT = advantages_B.detach()[:, None] * weights_BT
    if sequence_weights_B is not None:
        scale_BT = scale_BT * sequence_weights_B.detach()[:, None]
    loss = -_masked_sum(scale_BT * logprobs_BT, loss_mask_BT) / num_tokens
    with torch.no_grad():
        metrics = {
            "loss/off_policy_is": loss.detach(),
            "policy/is_weight_mean": _masked_mean(weights_BT, loss_mask_BT),
            "policy/is_truncated_fraction": _masked_mean((weights_BT >= max_weight).float(), loss_mask_BT),
        }
    return loss, metrics


def luffy_loss(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    loss_mask_BT: torch.Tensor,
    off_policy_B: torch.Tensor,
    *,
    num_tokens: torch.Tensor | float,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    gamma: float = 0.1,
) -> tuple[torch.Tensor, Metrics]:
    """LUFFY mixed-group loss (Yan et al. 2025, arXiv 2504.14945; baseline 4.5 of the method notes).

    On-policy rows (off_policy_B False) use the clipped PPO surrogate. Off-policy rows (full correct traces placed
    in the group) use the policy-shaping weight f(p) = p / (p + gamma) of p = pi_theta(token) in place of the ratio,
    unclipped:  loss_t = -A * f(p_t). The loss is a token mean: sum over both kinds / num_tokens.
    `old_logprobs_BT` is ignored on off-policy rows. off_policy_B: bool [B].
    """
    if gamma <= 0.0:
        raise ValueError(f"gamma={gamma} must be > 0 (LUFFY uses 0.1)")
    on_BT, _, is_clipped_BT = _clipped_surrogate(
        logprobs_BT, old_logprobs_BT, advantages_B, clip_low=clip_low, clip_high=clip_high
    )
    p_BT = torch.exp(logprobs_BT)
    off_BT = -advantages_B.detach()[:, None] * p_BT / (p_BT + gamma)
    is_off_BT = off_policy_B.bool()[:, None].expand_as(logprobs_BT)
    loss = _masked_sum(torch.where(is_off_BT, off_BT, on_BT), loss_mask_BT) / num_tokens
    with torch.no_grad():
        on_mask_BT = loss_mask_BT * (~is_off_BT).float()
        metrics = {
            "loss/luffy": loss.detach(),
            "policy/clip_fraction": _masked_mean(is_clipped_BT.float(), on_mask_BT),
            "policy/off_policy_token_fraction": _masked_mean(is_off_BT.float(), loss_mask_BT),
        }
    return loss, metrics
