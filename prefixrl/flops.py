"""Analytic FLOP accounting (method notes 6): 2*N*D per sampled token, 6*N*D per trained token.

N is the non-embedding parameter count (`non_embedding_params(hf_config)`) and D counts every token a pass touches:
prompt, prefix and completion. One cumulative `FlopCounter` is fed by the sourcer (`charge_sourcing`) and by the
trainer (`add_sampling`, `add_training`, `add_forward_only`), and is saved with checkpoints via `to_dict` /
`from_dict`, so reward-vs-FLOPs curves can charge the up-front sourcing cost to PrefixRL as the paper does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SAMPLING_FLOPS_PER_PARAM_TOKEN = 2
"""One forward pass: a multiply and an add per parameter per token."""
TRAINING_FLOPS_PER_PARAM_TOKEN = 6
"""Forward (2) + backward (4)."""


@dataclass(slots=True)
class FlopCounter:
    """Cumulative FLOPs per bucket. Sourcing cost of problems left unsolved is also kept apart, so both
    accountings can be reported (the paper leaves it out; including it is stricter)."""

    num_params: int
    """Non-embedding parameters N of the policy (and of the sourcing model, for self-sourced traces)."""
    sourcing: float = 0.0
    """Rejection sampling, every attempt of every problem."""
    sourcing_unsolved: float = 0.0
    """The part of `sourcing` spent on problems that found no trace."""
    sampling: float = 0.0
    """On-policy rollouts during RL (and evaluation if fed)."""
    training: float = 0.0
    """Forward + backward passes of the policy update."""
    forward_only: float = 0.0
    """Extra forward passes (old or reference log-probs)."""

    def __post_init__(self) -> None:
        if self.num_params < 1:
            raise ValueError(f"num_params={self.num_params} must be >= 1; use non_embedding_params(hf_config)")

    def _flops(self, num_tokens: int, per_param_token: int) -> float:
        if num_tokens < 0:
            raise ValueError(f"num_tokens={num_tokens} must be >= 0")
        return float(per_param_token) * self.num_params * num_tokens

    def add_sourcing(self, num_tokens: int, *, solved: bool) -> None:
        flops = self._flops(num_tokens, SAMPLING_FLOPS_PER_PARAM_TOKEN)
        self.sourcing += flops
        if not solved:
            self.sourcing_unsolved += flops

    def add_sampling(self, num_tokens: int) -> None:
        self.sampling += self._flops(num_tokens, SAMPLING_FLOPS_PER_PARAM_TOKEN)

    def add_training(self, num_tokens: int) -> None:
        self.training += self._flops(num_tokens, TRAINING_FLOPS_PER_PARAM_TOKEN)

    def add_forward_only(self, num_tokens: int) -> None:
        self.forward_only += self._flops(num_tokens, SAMPLING_FLOPS_PER_PARAM_TOKEN)

    def total(self, *, include_sourcing: bool = True, include_unsolved: bool = True) -> float:
        """All FLOPs so far; drop the sourcing cost (plain RL baselines) or only its unsolved part (paper)."""
        rl = self.sampling + self.training + self.forward_only
        if not include_sourcing:
            return rl
        return rl + self.sourcing - (0.0 if include_unsolved else self.sourcing_unsolved)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlopCounter:
        return cls(**d)

    def metrics(self) -> dict[str, float]:
        """Log-ready `perf/` keys."""
        return {
            "perf/flops_sourcing": self.sourcing,
            "perf/flops_sourcing_unsolved": self.sourcing_unsolved,
            "perf/flops_sampling": self.sampling,
            "perf/flops_training": self.training,
            "perf/flops_forward_only": self.forward_only,
            "perf/flops_total": self.total(),
        }


def non_embedding_params(hf_config: dict[str, Any]) -> int:
    """Non-embedding parameters of a dense Llama / Qwen2 / Qwen3-style decoder from its HF `config.json` dict.

    Counts attention (q, k, v, o and their biases where the architecture has them; Qwen3's q/k norms), the gated
    MLP (gate, up, down) and RMSNorm weights. Token embeddings and the LM head are excluded (Kaplan et al. 2020).
    """
    model_type = hf_config.get("model_type")
    if model_type not in ("llama", "qwen2", "qwen3", "mistral"):
        raise ValueError(
            f"non_embedding_params supports dense llama/qwen2/qwen3/mistral configs, got model_type={model_type!r}; "
            "pass num_params to FlopCounter directly instead"
        )
    h = hf_config["hidden_size"]
    num_heads = hf_config["num_attention_heads"]
    num_kv = hf_config.get("num_key_value_heads", num_heads)
    head_dim = hf_config.get("head_dim") or h // num_heads
    q_dim, kv_dim = num_heads * head_dim, num_kv * head_dim
    attn = h * q_dim + 2 * h * kv_dim + q_dim * h
    if model_type == "qwen2" or hf_config.get("attention_bias", False):
        attn += q_dim + 2 * kv_dim + (h if hf_config.get("attention_bias", False) else 0)
    if model_type == "qwen3":
        attn += 2 * head_dim
    mlp = 3 * h * hf_config["intermediate_size"]
    if hf_config.get("mlp_bias", False):
        mlp += 2 * hf_config["intermediate_size"] + h
    norms = 2 * h
    return hf_config["num_hidden_layers"] * (attn + mlp + norms) + h
