"""The typed run configuration of `prefixrl train`: nested frozen dataclasses, dotted overrides, JSON round trip.

    cfg = apply_overrides(get_recipe("prefixrl_tiny_cpu_1n2c")(), ["rollout.n=16", "optim.lr=1e-5"])
    cfg.check(2, spec=spec)              # the launched world size and the model architecture, at setup
    json.dumps(to_dict(cfg))             # stored next to a run; `from_dict` rebuilds it (and compares on resume)
    print(describe(cfg))                 # every field with its type, value and docstring (for --help)

Defaults live only on the fields below: the paper's where it states one (method notes 2.10-2.11), ours ([D]) where
not. Each section validates itself in `__post_init__`; `TrainConfig.__post_init__` checks the constraints that span
sections; `TrainConfig.check` checks what needs the world size or the model architecture. Every error names the bad
value and the fix. This module imports no megatron (it sits under `prefixrl`).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prefixrl import settings
from prefixrl.advantages import ESTIMATORS
from prefixrl.settings import (  # noqa: F401  (re-exported: the config API)
    apply_overrides,
    describe,
    describe_fields,
    field_docs,
    settings_from_args,
    to_dict,
)

logger = logging.getLogger(__name__)

LOSSES = ("policy_gradient", "ppo_clipped")
"""Names `RLConfig.loss` accepts: functions of `prefixrl.losses` with the `(loss, metrics)` signature."""


class ArchitectureLike(Protocol):
    """What `ParallelConfig.check` needs from a model architecture (e.g. `megatron_ext.spec.ModelSpec`)."""

    num_heads: int
    num_kv_heads: int

    def check_parallel(self, *, tensor_parallel: int, pipeline_parallel: int) -> None: ...

    def valid_tensor_parallel_sizes(self) -> list[int]: ...


def _one_of(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(map(repr, choices))}")


def _at_least(name: str, value: float, low: float) -> None:
    if not value >= low:  # `not >=` also rejects NaN
        raise ValueError(f"{name}={value} must be >= {low}")


@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    """The policy model and its numerics."""

    path: str = "tiny-llama"
    """HF model directory (config.json + weights), or a tiny preset name ("tiny-llama", "tiny-qwen2", "tiny-qwen3")."""
    tokenizer: str | None = None
    """HF tokenizer directory or a `prefixrl.tokenizer` file (.model); None: the model directory."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype; bfloat16 keeps fp32 main params in the optimizer."""
    fp8: Literal["e4m3", "hybrid"] | None = None
    """FP8 format through Transformer Engine (GPU only); None disables FP8."""
    fp8_recipe: Literal["tensorwise", "blockwise"] = "tensorwise"
    """FP8 scaling recipe (Transformer Engine); used only when fp8 is set."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("model.path is empty; give an HF model directory or a tiny preset such as 'tiny-llama'")
        _one_of("model.dtype", self.dtype, ("float32", "bfloat16"))
        _one_of("model.fp8", self.fp8, (None, "e4m3", "hybrid"))
        _one_of("model.fp8_recipe", self.fp8_recipe, ("tensorwise", "blockwise"))
        if self.fp8 is not None and self.dtype != "bfloat16":
            raise ValueError(f"model.fp8={self.fp8!r} needs bfloat16 parameters; set model.dtype=bfloat16")


@dataclass(kw_only=True, frozen=True)
class ParallelConfig:
    """Megatron TP/PP (DP is what is left of the world size) and the colocated vLLM engine's TP."""

    tensor_parallel: int = 1
    """Megatron tensor-parallel size."""
    pipeline_parallel: int = 1
    """Megatron pipeline-parallel size."""
    engine_tensor_parallel: int = 1
    """vLLM tensor-parallel size; the world holds world_size / engine_tensor_parallel engine replicas."""
    distributed_optimizer: bool = True
    """Shard fp32 main params and Adam states over data-parallel ranks (Megatron's distributed optimizer)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs tensor_parallel > 1)."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "engine_tensor_parallel"):
            _at_least(f"parallel.{name}", getattr(self, name), 1)
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ValueError("parallel.sequence_parallel=true needs tensor_parallel > 1; set it to false")

    def data_parallel(self, world_size: int) -> int:
        """Data-parallel size for `world_size` ranks (call `check` first)."""
        return world_size // (self.tensor_parallel * self.pipeline_parallel)

    def check(self, world_size: int, *, spec: ArchitectureLike | None = None) -> None:
        """Raise ValueError naming valid sizes when the layout does not fit the world size or the model."""
        divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
        model_parallel = self.tensor_parallel * self.pipeline_parallel
        if world_size % model_parallel:
            raise ValueError(
                f"tensor_parallel * pipeline_parallel = {self.tensor_parallel} * {self.pipeline_parallel} = "
                f"{model_parallel} does not divide world size {world_size}; use a product in {divisors}"
            )
        if world_size % self.engine_tensor_parallel:
            raise ValueError(
                f"parallel.engine_tensor_parallel={self.engine_tensor_parallel} does not divide world size "
                f"{world_size}; use one of {divisors}"
            )
        if spec is None:
            return
        spec.check_parallel(tensor_parallel=self.tensor_parallel, pipeline_parallel=self.pipeline_parallel)
        valid = spec.valid_tensor_parallel_sizes()
        if self.engine_tensor_parallel not in valid:
            raise ValueError(
                f"parallel.engine_tensor_parallel={self.engine_tensor_parallel} does not divide num_heads="
                f"{spec.num_heads} and num_kv_heads={spec.num_kv_heads}; use one of {valid}"
            )


@dataclass(kw_only=True, frozen=True)
class DataConfig:
    """Where problems, traces and the prefixed pool live, and how a problem becomes a prompt and is verified."""

    problems: str | None = None
    """Training problems (.jsonl, .parquet or a `datasets` directory); None: the demo's generated hard problems."""
    traces: str | None = None
    """Directory of rejection-sampling shards (`prefixrl sample`); None: <logging.out_dir>/traces."""
    pool: str | None = None
    """Prefixed pool file written by `prefixrl prefixes`; None: built at start-up from problems + traces."""
    eval_problems: str | None = None
    """Held-out problems evaluated without prefixes; None: the unprefixed training problems only."""
    id_field: str | None = "id"
    """Problem field with a unique id; None numbers the rows."""
    prompt_field: str = "problem"
    """Problem field with the statement (the user turn)."""
    answer_field: str = "answer"
    """Problem field with the reference final answer."""
    user_template: str = "{prompt}"
    """Format string of the user message; `{prompt}` is replaced by the problem text."""
    verifier: Literal["math", "arith", "exact"] = "math"
    """Answer checker: "math" (math-verify on the final answer), "arith" (`prefixrl.tasks.arith`), "exact" (last
    line equals the answer)."""

    def __post_init__(self) -> None:
        if "{prompt}" not in self.user_template:
            raise ValueError(f"data.user_template={self.user_template!r} has no '{{prompt}}' placeholder; add one")
        _one_of("data.verifier", self.verifier, ("math", "arith", "exact"))


@dataclass(kw_only=True, frozen=True)
class PrefixConfig:
    """How prefixes are cut from correct traces and mixed with unprefixed problems (method notes 2.3-2.5)."""

    strategy: Literal["fixed", "adaptive"] = "fixed"
    """"fixed": cuts drawn once, uniformly in [low, high] (the paper); "adaptive": cuts move earlier as the policy
    solves a problem (`prefixrl.prefixes.AdaptiveCuts`, beyond the paper)."""
    num_cuts: int = 3
    """Prefixed variants per problem."""
    low: float = 0.4
    """Smallest cut, as a fraction of the trace's tokens."""
    high: float = 0.8
    """Largest cut, as a fraction of the trace's tokens (also the adaptive strategy's starting cut)."""
    prefixed_to_unprefixed: int | None = 3
    """Prefixed prompts per unprefixed prompt in the pool (3 = the paper's 3:1 mix); must divide num_cuts; None
    trains on prefixed prompts only."""
    adaptive_step: float = 0.1
    """strategy=adaptive only: how far a cut moves earlier once the problem is solved often enough."""
    adaptive_success_threshold: float = 0.5
    """strategy=adaptive only: group accuracy at which a problem's cut moves earlier."""
    too_long: Literal["skip", "fail"] = "skip"
    """Prefixed prompts longer than rollout.max_model_len - rollout.max_new_tokens: dropped and counted, or an
    error."""
    seed: int = 0
    """Seed of the cut points and of the pool's one-time shuffle."""

    def __post_init__(self) -> None:
        _one_of("prefix.strategy", self.strategy, ("fixed", "adaptive"))
        _one_of("prefix.too_long", self.too_long, ("skip", "fail"))
        _at_least("prefix.num_cuts", self.num_cuts, 1)
        if not (0.0 < self.low <= self.high < 1.0):
            raise ValueError(f"prefix.low={self.low}, prefix.high={self.high}: need 0 < low <= high < 1, e.g. 0.4, 0.8")
        ratios = [d for d in range(1, self.num_cuts + 1) if self.num_cuts % d == 0]
        if self.prefixed_to_unprefixed is not None and self.prefixed_to_unprefixed not in ratios:
            raise ValueError(
                f"prefix.prefixed_to_unprefixed={self.prefixed_to_unprefixed} does not divide num_cuts="
                f"{self.num_cuts}; use one of {ratios}, or None for prefixed-only training"
            )
        if not (0.0 < self.adaptive_step < 1.0 and 0.0 < self.adaptive_success_threshold <= 1.0):
            raise ValueError(
                f"prefix.adaptive_step={self.adaptive_step} and adaptive_success_threshold="
                f"{self.adaptive_success_threshold}: need 0 < step < 1 and 0 < threshold <= 1"
            )
        moved = self.adaptive_step != 0.1 or self.adaptive_success_threshold != 0.5
        if self.strategy == "fixed" and moved:
            logger.warning("prefix.adaptive_* is set but prefix.strategy='fixed' ignores it")

    @property
    def unprefixed_copies(self) -> int:
        """Unprefixed copies of each solved problem in the pool (`prefixrl.prefixes.PoolConfig`)."""
        return 0 if self.prefixed_to_unprefixed is None else self.num_cuts // self.prefixed_to_unprefixed


@dataclass(kw_only=True, frozen=True)
class RolloutConfig:
    """On-policy sampling with the colocated engine."""

    prompts_per_step: int = 128
    """Prompts (groups) per training step; the step trains on prompts_per_step * n rollouts."""
    n: int = 8
    """Rollouts per prompt (the group size of the advantage baseline)."""
    max_new_tokens: int = 16384
    """Generation cap per completion, in tokens; a truncated completion gets reward 0."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it."""
    max_model_len: int = 36000
    """Longest prompt + prefix + completion the engine accepts, in tokens."""
    kv_cache_gib: int | None = None
    """CPU engine only: KV cache size in whole GiB; None keeps VLLM_CPU_KVCACHE_SPACE from the environment."""
    gpu_memory_utilization: float = 0.6
    """GPU engine only: share of GPU memory vLLM may take while awake (the trainer's states are offloaded)."""

    def __post_init__(self) -> None:
        for name in ("prompts_per_step", "n", "max_new_tokens"):
            _at_least(f"rollout.{name}", getattr(self, name), 1)
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError(
                f"rollout.max_new_tokens={self.max_new_tokens} leaves no room for the prompt in max_model_len="
                f"{self.max_model_len}; raise rollout.max_model_len or lower max_new_tokens"
            )
        if not (self.temperature > 0.0 and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"rollout.temperature={self.temperature} must be > 0 and top_p={self.top_p} in (0, 1]")
        if self.kv_cache_gib is not None:
            _at_least("rollout.kv_cache_gib", self.kv_cache_gib, 1)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"rollout.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")


@dataclass(kw_only=True, frozen=True)
class RLConfig:
    """Advantage estimator and policy loss (method notes 2.8: REINFORCE, group-mean baseline, no KL)."""

    estimator: str = "reinforce"
    """Advantage estimator, a key of `prefixrl.advantages.ESTIMATORS` (reinforce, rloo, grpo, dr_grpo)."""
    loss: Literal["policy_gradient", "ppo_clipped"] = "policy_gradient"
    """Policy loss in `prefixrl.losses`; with one update per batch, ppo_clipped equals policy_gradient."""
    clip_low: float = 0.2
    """loss=ppo_clipped: lower ratio clip, 1 - clip_low."""
    clip_high: float = 0.2
    """loss=ppo_clipped: upper ratio clip, 1 + clip_high (0.28 is DAPO's clip-higher)."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to the initial policy; 0 disables it and skips the reference model."""
    tis_cap: float | None = None
    """Truncated importance sampling cap on the trainer/engine probability ratio of completion tokens; None off."""

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            close = difflib.get_close_matches(self.estimator, ESTIMATORS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"rl.estimator={self.estimator!r} is unknown{hint}; use one of {sorted(ESTIMATORS)}")
        _one_of("rl.loss", self.loss, LOSSES)
        if not (0.0 <= self.clip_low < 1.0 and self.clip_high >= 0.0):
            raise ValueError(f"rl.clip_low={self.clip_low} must be in [0, 1) and rl.clip_high={self.clip_high} >= 0")
        _at_least("rl.kl_coef", self.kl_coef, 0.0)
        if self.tis_cap is not None:
            _at_least("rl.tis_cap", self.tis_cap, 1.0)


@dataclass(kw_only=True, frozen=True)
class OptimConfig:
    """Adam and its learning-rate schedule; one optimizer update per step (method notes 2.10)."""

    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule."""
    weight_decay: float = 0.01
    """Decoupled weight decay (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam beta1, beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    warmup_steps: int = 10
    """Linear warm-up steps from 0 to lr."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant lr, or cosine decay to min_lr at the last step."""
    micro_batch_size: int = 1
    """Sequences per micro-batch per data-parallel rank; gradients accumulate over micro-batches."""
    max_seq_len: int = 36000
    """Longest training sequence (prompt + prefix + completion) in tokens; must fit rollout.max_model_len."""

    def __post_init__(self) -> None:
        if not (self.lr > 0.0 and 0.0 <= self.min_lr <= self.lr):
            raise ValueError(f"optim.lr={self.lr} must be > 0 and optim.min_lr={self.min_lr} in [0, lr]")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"optim.betas={self.betas} must be two values in [0, 1), e.g. (0.9, 0.999)")
        for name in ("weight_decay", "clip_grad", "warmup_steps"):
            _at_least(f"optim.{name}", getattr(self, name), 0)
        if not self.eps > 0.0:
            raise ValueError(f"optim.eps={self.eps} must be > 0, e.g. 1e-8")
        _one_of("optim.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _at_least("optim.micro_batch_size", self.micro_batch_size, 1)
        _at_least("optim.max_seq_len", self.max_seq_len, 2)


@dataclass(kw_only=True, frozen=True)
class EvalConfig:
    """Periodic evaluation without prefixes (method notes 7: pass@k from 256 samples at T = 0.7)."""

    every_steps: int = 50
    """Evaluate every this many steps (and before the first and after the last); 0 disables evaluation."""
    num_samples: int = 256
    """Samples per problem; pass@k is reported for k = 1, 2, 4, ..., num_samples."""
    temperature: float = 0.7
    """Sampling temperature."""
    max_new_tokens: int = 16384
    """Generation cap per sample."""
    num_problems: int | None = None
    """Evaluate on the first this many problems of each set; None: all."""

    def __post_init__(self) -> None:
        _at_least("eval.every_steps", self.every_steps, 0)
        _at_least("eval.num_samples", self.num_samples, 1)
        _at_least("eval.max_new_tokens", self.max_new_tokens, 1)
        if not self.temperature > 0.0:
            raise ValueError(f"eval.temperature={self.temperature} must be > 0")
        if self.num_problems is not None:
            _at_least("eval.num_problems", self.num_problems, 1)


@dataclass(kw_only=True, frozen=True)
class CheckpointConfig:
    """Distributed checkpoints for exact resume."""

    dir: str | None = None
    """Checkpoint directory; None: <logging.out_dir>/checkpoints."""
    every_steps: int = 50
    """Save every this many steps (and at the last step, and on SIGUSR1); 0 saves only at the end and on signal."""
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted after a successful save."""
    resume: Literal["auto", "never", "must"] = "auto"
    """"auto": resume from the latest checkpoint if any; "never": refuse a directory holding one; "must": fail
    without one."""

    def __post_init__(self) -> None:
        _at_least("checkpoint.every_steps", self.every_steps, 0)
        _at_least("checkpoint.keep_last", self.keep_last, 1)
        _one_of("checkpoint.resume", self.resume, ("auto", "never", "must"))


@dataclass(kw_only=True, frozen=True)
class LoggingConfig:
    """Where the run writes, and which metric sinks are on."""

    out_dir: str = "runs/prefixrl"
    """Run directory: config.json, metrics, plots, and by default traces and checkpoints."""
    tensorboard: bool = True
    """Write TensorBoard event files under <out_dir>/tb."""
    jsonl: bool = True
    """Append one JSON line of metrics per step to <out_dir>/metrics.jsonl."""
    plots: bool = True
    """Write PNG plots (reward vs step and vs FLOPs, entropy) at the end of the run."""

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise ValueError("logging.out_dir is empty; give a directory, e.g. runs/my_run")


@dataclass(kw_only=True, frozen=True)
class MismatchConfig:
    """Trainer-versus-engine log-prob check after each weight sync (`prefixrl.engine.mismatch`)."""

    threshold: float = 1.05
    """Bound on mismatch/token_mult_prob_error (1.0 = identical); the default tolerates a bf16 engine."""
    action: Literal["warn", "stop"] = "warn"
    """Above the threshold: log a warning, or stop the run with an error."""
    sample_fraction: float = 1.0
    """Share of the step's rollouts whose completion tokens are compared."""

    def __post_init__(self) -> None:
        _at_least("mismatch.threshold", self.threshold, 1.0)
        _one_of("mismatch.action", self.action, ("warn", "stop"))
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"mismatch.sample_fraction={self.sample_fraction} must be in (0, 1]")


@dataclass(kw_only=True, frozen=True)
class ClusterConfig:
    """The machines a run is launched on (read by `recipes.launch` and checked against the parallel layout)."""

    num_nodes: int = 1
    """Nodes of the job."""
    gpus_per_node: int = 1
    """Ranks per node: GPUs on a GPU cluster, CPU processes on a CPU box."""
    accelerator: Literal["gpu", "cpu"] = "gpu"
    """"gpu": one rank per GPU, NCCL; "cpu": CPU ranks over gloo (no GPUs are requested from Slurm)."""
    account: str = "prefixrl"
    """Slurm account (sbatch --account)."""
    partition: str | None = None
    """Slurm partition; None: the cluster's default."""
    time_limit: str = "04:00:00"
    """Slurm time limit, HH:MM:SS; the job is signalled to checkpoint shortly before it."""

    def __post_init__(self) -> None:
        _at_least("cluster.num_nodes", self.num_nodes, 1)
        _at_least("cluster.gpus_per_node", self.gpus_per_node, 1)
        _one_of("cluster.accelerator", self.accelerator, ("gpu", "cpu"))
        parts = self.time_limit.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"cluster.time_limit={self.time_limit!r} is not HH:MM:SS, e.g. 04:00:00")
        if not self.account:
            raise ValueError("cluster.account is empty; nemo-run's Slurm executor needs one, e.g. prefixrl")

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.gpus_per_node


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """A complete PrefixRL training run."""

    run_name: str = "prefixrl"
    """Name of the run (logs, nemo-run experiment, Slurm job)."""
    steps: int = 400
    """Training steps, one optimizer update each."""
    seed: int = 0
    """Seed of the batch order, sampling and initialisation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model and its numerics."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Trainer and engine parallel layout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Problems, traces, pool, prompt format and verifier."""
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    """Prefix cutting and the prefixed/unprefixed mix."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """On-policy sampling."""
    rl: RLConfig = field(default_factory=RLConfig)
    """Advantage estimator and loss."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Periodic unprefixed evaluation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing and resume."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Output directory and metric sinks."""
    mismatch: MismatchConfig = field(default_factory=MismatchConfig)
    """Trainer/engine log-prob check."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Nodes and ranks the run is launched on."""

    def __post_init__(self) -> None:
        if not self.run_name or any(c.isspace() or c == "/" for c in self.run_name):
            raise ValueError(f"run_name={self.run_name!r} must be non-empty without spaces or '/', e.g. prefixrl_tiny")
        _at_least("steps", self.steps, 1)
        if self.optim.max_seq_len < self.rollout.max_model_len:
            raise ValueError(
                f"optim.max_seq_len={self.optim.max_seq_len} is shorter than rollout.max_model_len="
                f"{self.rollout.max_model_len}, so long rollouts could not be trained on; set optim.max_seq_len="
                f"{self.rollout.max_model_len}"
            )
        if self.eval.max_new_tokens >= self.rollout.max_model_len:
            raise ValueError(
                f"eval.max_new_tokens={self.eval.max_new_tokens} must be below rollout.max_model_len="
                f"{self.rollout.max_model_len} (the engine is shared); lower it"
            )
        if self.rl.estimator == "rloo" and self.rollout.n < 2:
            raise ValueError("rl.estimator=rloo needs rollout.n >= 2; raise rollout.n or use rl.estimator=reinforce")
        self.parallel.check(self.cluster.world_size)
        if self.parallel.engine_tensor_parallel > self.cluster.gpus_per_node:
            raise ValueError(
                f"parallel.engine_tensor_parallel={self.parallel.engine_tensor_parallel} spans nodes "
                f"(cluster.gpus_per_node={self.cluster.gpus_per_node}); use at most {self.cluster.gpus_per_node}"
            )
        if self.optim.warmup_steps > self.steps:
            logger.warning("optim.warmup_steps=%d exceeds steps=%d: lr never reaches its peak",
                           self.optim.warmup_steps, self.steps)

    @property
    def max_prompt_tokens(self) -> int:
        """Longest prompt + prefix that leaves room for a full completion."""
        return self.rollout.max_model_len - self.rollout.max_new_tokens

    def check(self, world_size: int, *, spec: ArchitectureLike | None = None) -> None:
        """Checks that need the launched world size (and optionally the model architecture); call at setup."""
        if world_size != self.cluster.world_size:
            raise ValueError(
                f"launched with {world_size} ranks but cluster.num_nodes * cluster.gpus_per_node = "
                f"{self.cluster.num_nodes} * {self.cluster.gpus_per_node} = {self.cluster.world_size}; launch "
                f"{self.cluster.world_size} ranks or set cluster.gpus_per_node / cluster.num_nodes"
            )
        self.parallel.check(world_size, spec=spec)
        dp = self.parallel.data_parallel(world_size)
        sequences = self.rollout.prompts_per_step * self.rollout.n
        per_update = dp * self.optim.micro_batch_size
        if sequences % per_update:
            raise ValueError(
                f"rollout.prompts_per_step * rollout.n = {sequences} sequences per step do not split into "
                f"micro-batches of optim.micro_batch_size={self.optim.micro_batch_size} over data-parallel size "
                f"{dp}; make the product a multiple of {per_update} (change rollout.prompts_per_step, rollout.n or "
                "optim.micro_batch_size)"
            )


def from_dict(d: dict[str, Any], cls: type = TrainConfig) -> Any:
    """Rebuild a TrainConfig (or `cls`) from `to_dict` output; see prefixrl.settings.from_dict."""
    return settings.from_dict(d, cls)
