"""Megatron `GPTModel` chunks for the Llama-3, Qwen2/2.5 and Qwen3 families.

    runtime.initialize(tensor_parallel=2)
    chunks = models.from_hf("path/to/hf_dir")          # this rank's TP/PP part, HF weights loaded
    logits_BTV = models.logits(chunks, input_ids_BT)   # full unpadded vocab on the last PP stage, else None

Layer spec: Megatron's local spec on CPU; the Transformer Engine spec on GPU when TE imports (FP8 needs it).
Precision: fp32, or bf16 params (the optimizer keeps fp32 main params; see megatron_ext.policy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from megatron_ext import runtime
from megatron_ext.spec import ModelSpec, tiny_preset

# Legend: B = sequences, T = tokens, V = vocab (V/TP when sharded), H = hidden.


@dataclass(kw_only=True, frozen=True)
class PrecisionConfig:
    """Numerics of the trained model."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype. bfloat16 keeps fp32 main params in the optimizer."""
    fp8: Literal["e4m3", "hybrid"] | None = None
    """FP8 format through Transformer Engine (GPU only); None disables FP8."""
    fp8_recipe: Literal["tensorwise", "blockwise"] = "tensorwise"
    """FP8 scaling recipe (Transformer Engine)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"precision dtype {self.dtype!r} is not supported; use float32 or bfloat16")
        if self.fp8 not in (None, "e4m3", "hybrid"):
            raise ValueError(f"fp8 format {self.fp8!r} is not supported; use e4m3, hybrid or None")
        if self.fp8_recipe not in ("tensorwise", "blockwise"):
            raise ValueError(f"fp8 recipe {self.fp8_recipe!r} is not supported; use tensorwise or blockwise")

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32


def transformer_engine_available() -> bool:
    """True when a GPU is present and Transformer Engine imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # TE raises RuntimeError/ImportError/OSError depending on what is missing
        return False
    return True


def check_fp8(precision: PrecisionConfig) -> None:
    """FP8 runs only through Transformer Engine on a GPU: fail early with the reason otherwise."""
    if precision.fp8 is None:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"FP8 ({precision.fp8}, {precision.fp8_recipe}) needs a CUDA GPU and Transformer Engine; this machine "
            "has no GPU. Set precision.fp8=None (bf16 or fp32) for CPU runs."
        )
    if not transformer_engine_available():
        raise RuntimeError(
            f"FP8 ({precision.fp8}) needs Transformer Engine, which does not import here. Install the GPU extra "
            "(pip install -e '.[gpu]') or set precision.fp8=None."
        )


def transformer_config(spec: ModelSpec, *, precision: PrecisionConfig = PrecisionConfig(),  # noqa: ANN201
                       for_loading: bool = False):
    """Megatron TransformerConfig for `spec` at the current parallel state. Random weights are drawn on the CPU (the
    full weight, then this rank's slice: the same model at every TP size); `for_loading`, for a caller that loads
    every parameter next, draws them on the GPU instead when there is one (this rank's slice only; fast). Megatron's
    initialisation is kept either way: it also marks the tensor-parallel parameters (`tensor_model_parallel`),
    without which the gradient norm counts them on one rank only (measured: TP=2 tied-embedding grad norm 15.7
    against 20.8)."""
    from megatron.core import parallel_state
    from megatron.core.transformer import TransformerConfig

    check_fp8(precision)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    spec.check_parallel(tensor_parallel=tp, pipeline_parallel=pp)
    if not torch.cuda.is_available() and spec.head_dim < 32:
        raise ValueError(f"head_dim={spec.head_dim} is below 32: vLLM's CPU attention rejects it; use head_dim >= 32")
    dtype = precision.torch_dtype
    fp8_kwargs = {}
    if precision.fp8 is not None:
        fp8_kwargs = dict(fp8=precision.fp8, fp8_recipe=precision.fp8_recipe)
    return TransformerConfig(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        ffn_hidden_size=spec.intermediate_size,
        num_attention_heads=spec.num_heads,
        num_query_groups=spec.num_kv_heads,
        kv_channels=spec.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=spec.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=spec.qkv_bias,
        qk_layernorm=spec.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=not (for_loading and torch.cuda.is_available()),
        perform_initialization=True,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        calculate_per_token_loss=True,
        **fp8_kwargs,
    )


def layer_spec(spec: ModelSpec, *, use_te: bool | None = None):  # noqa: ANN201
    """The local spec on CPU; the TE spec when a GPU is present and TE imports (or when use_te forces it)."""
    from megatron.core.models.gpt import gpt_layer_specs

    if use_te is None:
        use_te = transformer_engine_available()
    if use_te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=spec.qk_norm)
    return gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=spec.qk_norm, normalization="RMSNorm")


def _apply_llama3_rope_scaling(model: torch.nn.Module, spec: ModelSpec) -> None:
    """Recompute inv_freq with the config's own llama3 factors (Megatron hard-codes 1/4/8192)."""
    rot = model.rotary_pos_emb
    s = spec.rope_scaling or {}
    dim = spec.head_dim
    base = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    rot.inv_freq = rot._apply_scaling(
        base,
        factor=float(s.get("factor", 8.0)),
        low_freq_factor=float(s.get("low_freq_factor", 1.0)),
        high_freq_factor=float(s.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(s.get("original_max_position_embeddings", 8192)),
    )


def build(spec: ModelSpec, *, precision: PrecisionConfig = PrecisionConfig(), vocab_divisible_by: int = 128,
          for_loading: bool = False) -> list[torch.nn.Module]:
    """This rank's GPTModel chunk(s), randomly initialised (one chunk: no virtual pipeline stages); `for_loading`
    (`from_hf`: every parameter is loaded next): the random draws happen on the GPU if there is one."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    cfg = transformer_config(spec, precision=precision, for_loading=for_loading)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    llama3 = bool(spec.rope_scaling) and spec.rope_scaling.get("rope_type") == "llama3"
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=layer_spec(spec),
        vocab_size=spec.padded_vocab_size(tensor_parallel=tp, divisible_by=vocab_divisible_by),
        max_sequence_length=spec.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=spec.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=spec.rope_theta,
        rope_scaling=llama3,
    )
    if llama3:
        _apply_llama3_rope_scaling(model, spec)
    model.prefixrl_spec = spec  # the HF-side architecture travels with the chunk (export, logits trimming)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return [model]


def from_hf(path: str | os.PathLike, *, precision: PrecisionConfig | None = None) -> list[torch.nn.Module]:
    """Build this rank's chunks for the HF checkpoint at `path` and load its weights (each rank reads its part).

    `path` may also name a tiny preset ("tiny-llama", "tiny-qwen2", "tiny-qwen3"): random weights, no files.
    """
    from megatron_ext import convert

    if str(path).startswith("tiny-") and not os.path.exists(path):
        return build(tiny_preset(str(path)), precision=precision or PrecisionConfig())
    spec = ModelSpec.from_pretrained(path)
    if precision is None:
        precision = PrecisionConfig(dtype="bfloat16" if spec.torch_dtype == "bfloat16" else "float32")
    chunks = build(spec, precision=precision, for_loading=True)  # load_hf_into sets every parameter
    convert.load_hf_into(chunks, path)
    return chunks


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / Float16Module wrappers down to the GPTModel."""
    while hasattr(module, "module") and not hasattr(module, "decoder"):
        module = module.module
    return module


def spec_of(chunks: list[torch.nn.Module]) -> ModelSpec:
    return unwrap(chunks[0]).prefixrl_spec


def causal_mask(seq_len: int) -> torch.Tensor:
    """Megatron's boolean attention mask, True = masked, shape [1, 1, T, T]."""
    return ~torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool)).view(1, 1, seq_len, seq_len)


def forward_only(chunks: list[torch.nn.Module], input_ids_BT: torch.Tensor) -> torch.Tensor | None:
    """Vocab-parallel logits [B, T, Vpad/TP] on the last pipeline stage (None elsewhere), one micro-batch."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = runtime.device()
    ids_BT = input_ids_BT.to(device)
    B, T = ids_BT.shape
    pos_BT = torch.arange(T, device=device).unsqueeze(0).expand(B, T)
    mask = causal_mask(T).to(device)

    def step(data_iterator, model):  # noqa: ANN001, ANN202
        next(data_iterator)
        out = model(ids_BT, pos_BT, mask)
        return out, lambda output, non_loss_data=True: output.detach()

    for c in chunks:
        c.eval()
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([None]), model=chunks, num_microbatches=1,
            seq_length=T, micro_batch_size=B, forward_only=True, collect_non_loss_data=True,
        )
    if not parallel_state.is_pipeline_last_stage():
        return None
    return outputs[0]


def logits(chunks: list[torch.nn.Module], input_ids: torch.Tensor) -> torch.Tensor | None:
    """Full-vocab logits [B, T, V] (unpadded V) on the last pipeline stage; None on other stages. No dropout."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    shard_BTV = forward_only(chunks, input_ids)
    if shard_BTV is None:
        return None
    full_BTV = gather_from_tensor_model_parallel_region(shard_BTV)
    return full_BTV[..., : spec_of(chunks).vocab_size].float()
