"""Trainer-vs-engine log-prob mismatch metrics and the gate that acts on them.

After every weight sync the trainer recomputes the log-probs of a sample of the tokens the engine just generated and
compares them with the engine's own sampled-token log-probs. Silently wrong engine weights (a stale cache, vocab
padding leaking in, a mis-tied embedding, a tensor owned by the wrong PP stage) show up here as an error well above
1.0, long before they show up in the reward.

Both log-prob tensors must have the same semantics: log-softmax of the logits divided by the sampling temperature,
without top-p truncation (see `prefixrl.engine.vllm` for the engine side).

Shapes: B = sequences, T = completion tokens (padded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

logger = logging.getLogger(__name__)

__all__ = ["MismatchError", "MismatchGate", "mismatch_metrics"]


class MismatchError(RuntimeError):
    """The engine's log-probs disagree with the trainer's beyond the configured threshold."""


@torch.no_grad()
def mismatch_metrics(
    trainer_logprobs_BT: torch.Tensor, engine_logprobs_BT: torch.Tensor, mask_BT: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Compare trainer and engine log-probs of the same sampled tokens.

    Args:
        trainer_logprobs_BT: [B, T] log-probs recomputed by the trainer.
        engine_logprobs_BT: [B, T] log-probs reported by the engine for the same tokens.
        mask_BT: [B, T] bool (or 0/1) mask of the positions to compare.

    Returns 0-dim float64 tensors (no host sync here):
        `mismatch/token_mult_prob_error`: mean over masked tokens of exp(|delta|); 1.0 is a perfect match.
        `mismatch/max_abs_logprob_diff`: max over masked tokens of |delta|.
        `mismatch/mean_abs_logprob_diff`: mean over masked tokens of |delta|.
        `mismatch/num_tokens`: number of masked tokens. With no tokens the errors read 1.0 / 0.0.
    """
    if trainer_logprobs_BT.shape != engine_logprobs_BT.shape or trainer_logprobs_BT.shape != mask_BT.shape:
        raise ValueError(
            f"shape mismatch: trainer {tuple(trainer_logprobs_BT.shape)}, engine {tuple(engine_logprobs_BT.shape)}, "
            f"mask {tuple(mask_BT.shape)}; all three must be [B, T]"
        )
    mask_BT = mask_BT.bool()
    # float64: exp(|delta|) of near-equal fp32 values must not round to exactly 1.0 and hide small errors.
    abs_diff_N = (trainer_logprobs_BT.double() - engine_logprobs_BT.double()).abs()[mask_BT]
    num = torch.tensor(abs_diff_N.numel(), dtype=torch.float64)
    if abs_diff_N.numel() == 0:
        one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        return {
            "mismatch/token_mult_prob_error": one,
            "mismatch/max_abs_logprob_diff": zero,
            "mismatch/mean_abs_logprob_diff": zero.clone(),
            "mismatch/num_tokens": num,
        }
    return {
        "mismatch/token_mult_prob_error": abs_diff_N.exp().mean(),
        "mismatch/max_abs_logprob_diff": abs_diff_N.max(),
        "mismatch/mean_abs_logprob_diff": abs_diff_N.mean(),
        "mismatch/num_tokens": num,
    }


@dataclass(kw_only=True, frozen=True)
class MismatchGate:
    """Warns or stops the run when the engine's log-probs drift from the trainer's.

    The default threshold tolerates a bf16 engine against an fp32 trainer (typically 1.00-1.02). When both sides
    run fp32 the error is 1.0000 to five digits, so a threshold of 1.001 catches even mild corruption: on the
    near-uniform tiny random test models one MLP tensor scaled by 1.5 gives only ~1.04 (real models, with peaked
    distributions, move much more).
    """

    max_token_mult_prob_error: float = 1.05
    """Upper bound on `mismatch/token_mult_prob_error` (1.0 = identical log-probs)."""
    max_abs_logprob_diff: float | None = None
    """Optional upper bound on `mismatch/max_abs_logprob_diff` (nats); None disables this check."""
    on_exceed: Literal["warn", "raise"] = "warn"
    """"warn": log a warning and continue; "raise": raise `MismatchError` (stops the run)."""

    def __post_init__(self) -> None:
        if self.max_token_mult_prob_error < 1.0:
            raise ValueError(
                f"max_token_mult_prob_error={self.max_token_mult_prob_error} is below 1.0, the value of a perfect "
                "match, so every step would fail; use a value >= 1.0 such as 1.05"
            )
        if self.on_exceed not in ("warn", "raise"):
            raise ValueError(f"on_exceed={self.on_exceed!r}; use 'warn' or 'raise'")

    def __call__(self, metrics: dict[str, torch.Tensor]) -> bool:
        """Check `mismatch_metrics` output; returns True when within bounds, else warns or raises."""
        err = float(metrics["mismatch/token_mult_prob_error"])
        max_abs = float(metrics["mismatch/max_abs_logprob_diff"])
        if float(metrics["mismatch/num_tokens"]) == 0:
            logger.warning("mismatch gate: no tokens were compared; the weight-sync check did not run this step")
            return True
        problems = []
        if not err <= self.max_token_mult_prob_error:  # `not <=` also catches NaN
            problems.append(f"token_mult_prob_error={err:.6f} > {self.max_token_mult_prob_error}")
        if self.max_abs_logprob_diff is not None and not max_abs <= self.max_abs_logprob_diff:
            problems.append(f"max_abs_logprob_diff={max_abs:.6f} > {self.max_abs_logprob_diff}")
        if not problems:
            return True
        msg = (
            "engine log-probs disagree with the trainer's after the weight sync ("
            + "; ".join(problems)
            + "): the engine is likely running wrong weights (check the export: vocab padding, tied embeddings, "
            "PP ownership, stale caches)"
        )
        if self.on_exceed == "raise":
            raise MismatchError(msg)
        logger.warning(msg)
        return False
