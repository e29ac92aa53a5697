"""Model architecture as a typed record, read from an HF `config.json` or a named tiny preset.

This module imports no megatron: recipes and memory plans read architectures through it on any machine.

Supported families (HF `architectures[0]`):
- LlamaForCausalLM (Llama-3 family: RMSNorm, SwiGLU, RoPE with optional llama3 scaling, GQA)
- Qwen2ForCausalLM (Qwen2 / Qwen2.5: QKV bias, tied or untied embeddings)
- Qwen3ForCausalLM (Qwen3: QK RMSNorm per head, explicit head_dim)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
"""HF architecture name -> family tag."""

MIN_CPU_HEAD_DIM = 32
"""vLLM's CPU attention kernel rejects smaller heads ("Unsupported CPU attention configuration: head_dim=16")."""


@dataclass(kw_only=True, frozen=True)
class ModelSpec:
    """A decoder-only transformer of one of the supported families, in HF terms."""

    architecture: str
    """HF architecture name, e.g. "LlamaForCausalLM"."""
    vocab_size: int
    """True (unpadded) vocabulary size."""
    hidden_size: int
    """Model width."""
    intermediate_size: int
    """SwiGLU inner width (each of gate and up)."""
    num_layers: int
    """Number of transformer layers."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (GQA groups)."""
    head_dim: int
    """Per-head width; Qwen3 sets it explicitly, others use hidden_size // num_heads."""
    rope_theta: float
    """RoPE base."""
    rope_scaling: dict[str, Any] | None = None
    """HF rope scaling dict; only rope_type "llama3" is supported."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    tie_word_embeddings: bool = False
    """Output layer shares the input embedding matrix."""
    qkv_bias: bool = False
    """Bias on the Q, K and V projections (Qwen2)."""
    qk_norm: bool = False
    """RMSNorm on each query and key head (Qwen3)."""
    max_position_embeddings: int = 4096
    """Longest sequence the model is configured for."""
    torch_dtype: str = "float32"
    """Checkpoint dtype as written in config.json."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other config.json fields (token ids, model_type, ...), carried through to exported configs."""

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type", "default") not in ("llama3", "default"):
            raise ValueError(f"rope scaling {self.rope_scaling.get('rope_type')!r} is not supported; use llama3 or none")

    @property
    def family(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    # ----------------------------------------------------------------------------------------- parallel layouts
    def valid_tensor_parallel_sizes(self) -> list[int]:
        g = math.gcd(math.gcd(self.num_heads, self.num_kv_heads), self.intermediate_size)
        return [d for d in range(1, g + 1) if g % d == 0]

    def valid_pipeline_parallel_sizes(self) -> list[int]:
        return [d for d in range(1, self.num_layers + 1) if self.num_layers % d == 0]

    def check_parallel(self, *, tensor_parallel: int, pipeline_parallel: int) -> None:
        """Raise ValueError naming the valid sizes when a TP/PP layout does not fit this model."""
        if tensor_parallel not in self.valid_tensor_parallel_sizes():
            raise ValueError(
                f"tensor parallel size {tensor_parallel} does not divide num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads} and intermediate_size={self.intermediate_size}; "
                f"use one of {self.valid_tensor_parallel_sizes()}"
            )
        if pipeline_parallel not in self.valid_pipeline_parallel_sizes():
            raise ValueError(
                f"pipeline parallel size {pipeline_parallel} does not divide num_layers={self.num_layers}; "
                f"use one of {self.valid_pipeline_parallel_sizes()}"
            )

    def padded_vocab_size(self, *, tensor_parallel: int, divisible_by: int = 128) -> int:
        """Megatron's vocab padding: round up to a multiple of divisible_by * tensor_parallel."""
        m = divisible_by * tensor_parallel
        return ((self.vocab_size + m - 1) // m) * m

    def num_params(self, *, include_embeddings: bool = True) -> int:
        """Parameter count (unpadded vocab)."""
        h, q, kv, d = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = h * (q + 2 * kv) * d + q * d * h + (q + 2 * kv) * d * int(self.qkv_bias) + 2 * d * int(self.qk_norm)
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) if include_embeddings else 0
        return self.num_layers * per_layer + h + emb

    # ----------------------------------------------------------------------------------------- HF config i/o
    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelSpec:
        archs = cfg.get("architectures") or []
        arch = archs[0] if archs else ""
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {arch!r} in config.json; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        rope = dict(cfg.get("rope_parameters") or {})
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling")
        if scaling is None and rope.get("rope_type") not in (None, "default"):
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        heads = cfg["num_attention_heads"]
        family = SUPPORTED_ARCHITECTURES[arch]
        known = {
            "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_scaling", "rope_parameters",
            "rms_norm_eps", "tie_word_embeddings", "attention_bias", "max_position_embeddings", "torch_dtype", "dtype",
            "model_type", "hidden_act", "mlp_bias",
        }
        return cls(
            architecture=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=family == "qwen3",
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            extra={k: v for k, v in cfg.items() if k not in known},
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ModelSpec:
        """Read `config.json` from an HF model directory (or the file itself)."""
        p = Path(path)
        cfg_path = p / "config.json" if p.is_dir() else p
        if not cfg_path.exists():
            raise FileNotFoundError(f"no config.json at {cfg_path}; pass an HF model directory")
        return cls.from_hf_config(json.loads(cfg_path.read_text()))

    def to_hf_config(self) -> dict[str, Any]:
        """A config.json dict that HF transformers and vLLM load."""
        model_type = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[self.family]
        cfg: dict[str, Any] = {
            "model_type": model_type,
            **self.extra,
            "architectures": [self.architecture],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": self.torch_dtype,
        }
        if self.family == "llama":
            cfg["attention_bias"] = self.qkv_bias
            cfg["mlp_bias"] = False
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tiny_preset(name: str) -> ModelSpec:
    """Small random-init architectures for CPU runs and tests (head_dim 64, as vLLM's CPU attention needs)."""
    base = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
                head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=1024,
                extra={"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0})
    presets: dict[str, dict[str, Any]] = {
        "tiny-llama": dict(architecture="LlamaForCausalLM",
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
        "tiny-qwen2": dict(architecture="Qwen2ForCausalLM", qkv_bias=True, tie_word_embeddings=True),
        "tiny-qwen3": dict(architecture="Qwen3ForCausalLM", qk_norm=True),
    }
    if name not in presets:
        raise ValueError(f"unknown tiny preset {name!r}; choose one of {sorted(presets)}")
    return ModelSpec(**{**base, **presets[name]})


TINY_PRESETS = ("tiny-llama", "tiny-qwen2", "tiny-qwen3")
