"""Per-GPU memory estimate of a colocated PrefixRL run (Megatron trainer + vLLM engine on the same GPUs).

    est = estimate(ModelSpec.from_pretrained(cfg.model.path), cfg)
    est.check(budget_gib=H100_GIB, gpu_memory_utilization=cfg.rollout.gpu_memory_utilization, n=cfg.rollout.n)

Assumptions (state them when quoting a number):
- Trainer, per GPU: parameters in the model dtype sharded over TP x PP; gradients accumulated in fp32 (Megatron's
  main_grad buffers); Adam m and v plus fp32 main params (bf16 models) sharded over DP as well when the distributed
  optimizer is on (Rajbhandari et al. 2020, ZeRO-1). FP8 adds a 1-byte weight copy per parameter.
- Activations: full recomputation with sequence parallelism (Korthikanti et al. 2022): each in-flight micro-batch
  (PP of them under 1F1B) keeps one bf16 layer input per layer of the stage, s * h * 2 / TP bytes; plus the working
  set of one layer being recomputed, 34 * s * h / TP bytes (flash attention: no s^2 term); plus the last stage's
  logits, s * V / TP * 6 bytes (bf16 logits and an fp32 copy for the vocab-parallel log-softmax). Without
  Transformer Engine (local spec, unfused attention) Megatron also keeps a persistent score buffer of micro-batch x
  heads / TP x s^2 x 2 bytes between steps, which this estimate leaves out (measured: docs/gpu.md).
- The trainer states are exact on a GPU: 33.30 GiB allocated between steps of an 8B-shape 4-layer slice (1.92 B
  parameters, DP=1) = the 32.24 GiB planned + that 1.00 GiB score buffer (docs/gpu.md, 2026-11-27).
- Engine, per GPU: bf16 weights sharded over the engine TP, and a KV cache of 2 * layers * kv_heads_per_rank *
  head_dim * 2 bytes per token. While the engine generates, the trainer's states stay resident; the engine's
  share (`gpu_memory_utilization` of the card) must hold its weights and the KV cache of at least one full group
  (n sequences of max_model_len tokens). While the trainer trains, the engine sleeps and holds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_ext.spec import ModelSpec
from prefixrl.config import TrainConfig

GIB = 1024**3
H100_GIB = 79.0
"""Usable memory of an H100 80 GB card (81,559 MiB reported, less the CUDA context)."""
RESERVE_GIB = 4.0
"""CUDA context, NCCL buffers and allocator fragmentation, per GPU."""


@dataclass(kw_only=True, frozen=True)
class MemoryEstimate:
    """Per-GPU memory of one rank, in GiB (see the module docstring for what each term assumes)."""

    weights_gib: float
    """Trainer parameters (model dtype, plus an FP8 copy when FP8 is on)."""
    grads_gib: float
    """fp32 gradient buffers."""
    optimizer_gib: float
    """Adam m, v and fp32 main params."""
    activations_gib: float
    """Peak activations of a training step."""
    engine_weights_gib: float
    """vLLM weights (bf16)."""
    kv_per_sequence_gib: float
    """vLLM KV cache of one max_model_len sequence on this rank."""

    @property
    def trainer_states_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib

    @property
    def train_peak_gib(self) -> float:
        return self.trainer_states_gib + self.activations_gib + RESERVE_GIB

    def check(self, *, budget_gib: float, gpu_memory_utilization: float, n: int) -> None:
        """Raise ValueError naming the overflow when training or generation does not fit `budget_gib`."""
        if self.train_peak_gib > budget_gib:
            raise ValueError(f"training needs {self.train_peak_gib:.1f} GiB per GPU > {budget_gib} GiB ({self}); "
                             "raise tensor/pipeline parallel or turn on the distributed optimizer")
        engine_gib = gpu_memory_utilization * budget_gib
        if self.trainer_states_gib + engine_gib + RESERVE_GIB > budget_gib:
            raise ValueError(
                f"trainer states {self.trainer_states_gib:.1f} GiB + engine share {engine_gib:.1f} GiB + reserve "
                f"{RESERVE_GIB} GiB exceed {budget_gib} GiB; lower rollout.gpu_memory_utilization to at most "
                f"{(budget_gib - self.trainer_states_gib - RESERVE_GIB) / budget_gib:.2f}"
            )
        kv_gib = engine_gib - self.engine_weights_gib
        if kv_gib < n * self.kv_per_sequence_gib:
            raise ValueError(
                f"engine share {engine_gib:.1f} GiB leaves {kv_gib:.1f} GiB of KV cache after {self.engine_weights_gib:.1f}"
                f" GiB of weights: less than one group of {n} full sequences ({n * self.kv_per_sequence_gib:.1f} GiB);"
                " raise parallel.engine_tensor_parallel or rollout.gpu_memory_utilization"
            )


def trainer_states_gib(params: int, *, dtype: str, fp8: bool, model_parallel: int,
                       optimizer_shard: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) GiB per GPU for `params` parameters: weights in `dtype` (plus a 1-byte FP8
    copy) and fp32 gradients split over `model_parallel` (TP x PP) ranks; Adam m and v, plus fp32 main params for
    bf16 models, split over `optimizer_shard` ranks (TP x PP, times DP under the distributed optimizer)."""
    param_bytes = (2 if dtype == "bfloat16" else 4) + (1 if fp8 else 0)
    opt_bytes = 8 + (4 if dtype == "bfloat16" else 0)
    return (params * param_bytes / model_parallel / GIB, params * 4 / model_parallel / GIB,
            params * opt_bytes / optimizer_shard / GIB)


def estimate(spec: ModelSpec, cfg: TrainConfig) -> MemoryEstimate:
    """Per-GPU memory of `cfg` on model `spec` (world size from `cfg.cluster`)."""
    par = cfg.parallel
    tp, pp, etp = par.tensor_parallel, par.pipeline_parallel, par.engine_tensor_parallel
    dp = par.data_parallel(cfg.cluster.world_size)
    params = spec.num_params()
    weights, grads, optimizer = trainer_states_gib(
        params, dtype=cfg.model.dtype, fp8=cfg.model.fp8 is not None, model_parallel=tp * pp,
        optimizer_shard=tp * pp * (dp if par.distributed_optimizer else 1))

    s, h = cfg.optim.max_seq_len * cfg.optim.micro_batch_size, spec.hidden_size
    layers_per_stage = spec.num_layers // pp
    checkpoints = layers_per_stage * s * h * 2 / tp * pp
    working_layer = 34 * s * h / tp
    logits = s * spec.padded_vocab_size(tensor_parallel=tp) / tp * 6

    kv_heads_per_rank = max(1, spec.num_kv_heads // etp)
    kv_per_token = 2 * spec.num_layers * kv_heads_per_rank * spec.head_dim * 2
    return MemoryEstimate(
        weights_gib=weights,
        grads_gib=grads,
        optimizer_gib=optimizer,
        activations_gib=(checkpoints + working_layer + logits) / GIB,
        engine_weights_gib=params * 2 / etp / GIB,
        kv_per_sequence_gib=kv_per_token * cfg.rollout.max_model_len / GIB,
    )
