"""The trained policy: Megatron GPTModel chunks under DDP + the distributed optimizer, driven by Megatron's schedule.

    runtime.initialize(tensor_parallel=2)
    policy = MegatronPolicy(PolicyConfig(model="tiny-llama", optim=OptimizerSettings(lr=1e-5)))
    batch = RLBatch.from_lists(prompt_plus_prefix_ids, completion_ids, advantages)
    metrics = policy.train_step(batch)                      # prefix-masked REINFORCE by default
    logprobs_BT = policy.logprobs(batch)                    # forward only, every rank gets the full [B, T]
    for name, tensor in policy.export_hf(): ...             # weight sync stream (collective)
    policy.save(ckpt_root, extra={"cursor": 7}); policy.load(ckpt_root)

Checkpoints: `dist_checkpointing` (model + optimizer, reshardable across TP/PP/DP), scheduler, step, non-finite
counters, user `extra` state (e.g. the data cursor), and per-rank RNG states. Each lands in `iter_XXXXXXX/` via a
temp dir + rename, and `latest` names the newest complete one; an incomplete directory is never read.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from megatron_ext import hooks, models, runtime
from megatron_ext.hooks import LossFn
from megatron_ext.models import PrecisionConfig
from prefixrl.batching import RLBatch

logger = logging.getLogger(__name__)

LATEST = "latest"
STATE_FILE = "prefixrl_state.pt"  # not common.pt: dist_checkpointing writes its own file of that name
COMPLETE = "complete"


@dataclass(kw_only=True, frozen=True)
class OptimizerSettings:
    """Adam + LR schedule (method notes, section 11 defaults)."""

    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of a decaying schedule."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    warmup_steps: int = 10
    """Linear warm-up steps from 0 to lr."""
    decay_steps: int = 0
    """Steps of the decay phase after warm-up (0: constant lr after warm-up)."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Shape of the decay phase."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optimizer lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError(f"warmup_steps and decay_steps must be >= 0, got {self.warmup_steps}, {self.decay_steps}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr_schedule {self.lr_schedule!r} is unknown; use constant, cosine or linear")


@dataclass(kw_only=True, frozen=True)
class PolicyConfig:
    """What MegatronPolicy builds. Parallel sizes come from megatron_ext.runtime.initialize."""

    model: str
    """HF model directory, or a tiny preset name ("tiny-llama", "tiny-qwen2", "tiny-qwen3") with random weights."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """Parameter dtype and FP8."""
    optim: OptimizerSettings = field(default_factory=OptimizerSettings)
    """Optimizer and LR schedule."""
    micro_batch_size: int = 1
    """Sequences per micro-batch per DP rank (an upper bound when max_tokens_per_microbatch is set)."""
    max_tokens_per_microbatch: int | None = None
    """Token budget of one micro-batch (sequences x longest sequence); None: micro_batch_size alone decides."""
    max_seq_len: int = 2048
    """Longest prompt + prefix + completion a batch may hold."""
    temperature: float = 1.0
    """Sampling temperature: logits are divided by it before log-probs, as the engine does."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over DP ranks (Megatron DistributedOptimizer)."""
    max_nonfinite_in_a_row: int = 3
    """Fail the run after this many consecutive skipped (non-finite) steps."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def _decay_style(settings: OptimizerSettings) -> str:
    return "constant" if settings.lr_schedule == "constant" or settings.decay_steps == 0 else settings.lr_schedule


class MegatronPolicy:
    """Megatron-Core policy: train_step / logprobs / export_hf / save / load. All methods are collectives."""

    def __init__(self, cfg: PolicyConfig) -> None:
        from megatron.core import parallel_state
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
        from megatron.core.transformer.module import Float16Module

        self.cfg = cfg
        chunks = models.from_hf(cfg.model, precision=cfg.precision)
        self.spec = models.spec_of(chunks)
        mcfg = models.unwrap(chunks[0]).config
        if cfg.precision.dtype == "bfloat16":
            chunks = [Float16Module(mcfg, c) for c in chunks]
        ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                use_distributed_optimizer=cfg.use_distributed_optimizer)
        self.model = [DistributedDataParallel(mcfg, ddp_cfg, c) for c in chunks]
        mcfg.finalize_model_grads_func = finalize_model_grads
        o = cfg.optim
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
                            adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
                            clip_grad=o.clip_grad, bf16=cfg.precision.dtype == "bfloat16",
                            params_dtype=cfg.precision.torch_dtype,
                            use_distributed_optimizer=cfg.use_distributed_optimizer),
            self.model,
        )
        total = max(o.warmup_steps + o.decay_steps, o.warmup_steps + 1)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0 if o.warmup_steps else o.lr, max_lr=o.lr, min_lr=o.min_lr,
            lr_warmup_steps=o.warmup_steps, lr_decay_steps=total, lr_decay_style=_decay_style(o),
            start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=total, wd_incr_style="constant",
        )
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.pp_size = parallel_state.get_pipeline_model_parallel_world_size()

    # ------------------------------------------------------------------------------------------------ batches
    def _microbatches(self, batch: RLBatch) -> list[hooks.MicroBatch]:
        budgeted = self.cfg.max_tokens_per_microbatch is not None  # then micro_batch_size is only an upper bound
        hooks.check_batch(batch, dp_size=self.dp_size, micro_batch_size=1 if budgeted else self.cfg.micro_batch_size,
                          max_seq_len=self.cfg.max_seq_len)
        mbs = hooks.budgeted_micro_batch_size(batch, dp_size=self.dp_size, micro_batch_size=self.cfg.micro_batch_size,
                                              max_tokens_per_microbatch=self.cfg.max_tokens_per_microbatch)
        return hooks.make_microbatches(batch, dp_rank=self.dp_rank, dp_size=self.dp_size, micro_batch_size=mbs,
                                       max_seq_len=self.cfg.max_seq_len, same_length=self.pp_size > 1)

    def _run_schedule(self, micro: list[hooks.MicroBatch], forward_step: Any, *, forward_only: bool) -> list[Any]:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(micro), model=self.model,
            num_microbatches=len(micro), seq_length=micro[0].tokens_BT.shape[1],
            micro_batch_size=micro[0].tokens_BT.shape[0], forward_only=forward_only,
            collect_non_loss_data=forward_only,
        )

    # ------------------------------------------------------------------------------------------------ training
    def train_step(self, batch: RLBatch, *, loss: LossFn = hooks.policy_gradient_loss) -> dict[str, float]:
        """One optimizer step on `batch` (every rank passes the same full batch). Returns reduced metrics."""
        micro = self._microbatches(batch)
        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        forward_step = hooks.train_forward_step(loss, vocab_size=self.spec.vocab_size,
                                                temperature=self.cfg.temperature)
        reports = self._run_schedule(micro, forward_step, forward_only=False)
        sums = self._reduce_reports(reports)
        finite = torch.tensor(float(all(torch.isfinite(v).all() for v in sums.values()) and self._grads_finite()),
                              device=runtime.device())
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        metrics: dict[str, float] = {}
        if finite.item() == 1.0:
            ok, grad_norm, _ = self.optimizer.step()
            if not ok:
                raise RuntimeError("the Megatron optimizer refused the step (grad scaler overflow) without a scaler")
            self.scheduler.step(increment=1)
            self.nonfinite_in_a_row = 0
            metrics["policy/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        else:
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            logger.warning("non-finite loss or gradient: step skipped on all ranks (%d in a row)",
                           self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.cfg.max_nonfinite_in_a_row:
                raise NonFiniteError(f"{self.nonfinite_in_a_row} consecutive steps had a non-finite loss or "
                                     f"gradient (max_nonfinite_in_a_row={self.cfg.max_nonfinite_in_a_row})")
            metrics["policy/grad_norm"] = float("nan")
        self.step += 1
        tokens = max(sums.pop("tokens").item(), 1.0)
        metrics.update({k: v.item() / tokens for k, v in sums.items()})
        metrics.update({"perf/tokens": tokens, "train/skipped_nonfinite": self.nonfinite_total,
                        "train/lr": self.optimizer.param_groups[0]["lr"], "train/step": self.step})
        return metrics

    def _grads_finite(self) -> bool:
        return all(torch.isfinite(b.grad_data).all() for m in self.model for b in m.buffers)

    def _reduce_reports(self, reports: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Sum the micro-batch reports, over DP ranks, and share them from the last PP stage with every rank."""
        from megatron.core import parallel_state

        keys = sorted(reports[0]) if reports else []
        names = [keys]
        if self.pp_size > 1:
            src = dist.get_process_group_ranks(parallel_state.get_pipeline_model_parallel_group())[-1]
            dist.broadcast_object_list(names, src=src, group=parallel_state.get_pipeline_model_parallel_group())
        keys = names[0]
        if reports:
            vec = torch.stack([sum(r[k].double() for r in reports) for k in keys])
        else:
            vec = torch.zeros(len(keys), dtype=torch.double, device=runtime.device())
        if self.pp_size > 1:
            dist.broadcast(vec, src=src, group=parallel_state.get_pipeline_model_parallel_group())
        dist.all_reduce(vec, group=parallel_state.get_data_parallel_group())
        return dict(zip(keys, vec.float()))

    # ------------------------------------------------------------------------------------------------ inference
    def logprobs(self, batch: RLBatch) -> torch.Tensor:
        """Token log-probs [B, T] of the batch under the current weights (alignment of prefixrl.batching).

        Scaled by the sampling temperature like the engine's processed log-probs. Returned on every rank.
        """
        from megatron.core import parallel_state

        micro = self._microbatches(batch)
        for m in self.model:
            m.eval()
        with torch.no_grad():
            outputs = self._run_schedule(micro, hooks.logprob_forward_step(
                vocab_size=self.spec.vocab_size, temperature=self.cfg.temperature), forward_only=True)
        B, T = batch.tokens_BT.shape
        out_BT = torch.zeros(B, T, dtype=torch.float32, device=runtime.device())
        for index_B, lp_BT in outputs:
            out_BT[index_B.to(out_BT.device), : lp_BT.shape[1]] = lp_BT.float()
        dist.all_reduce(out_BT, group=parallel_state.get_data_parallel_group())  # ranks fill disjoint rows
        if self.pp_size > 1:
            group = parallel_state.get_pipeline_model_parallel_group()
            dist.broadcast(out_BT, src=dist.get_process_group_ranks(group)[-1], group=group)
        return out_BT.cpu() * batch.loss_mask_BT.gt(0)  # zero outside the mask

    def set_lr(self, lr: float) -> None:
        """Train at a constant `lr` from now on: the schedule's peak and floor both become `lr` (warm-up steps left,
        if any, still ramp up to it). For one run with two phases on one optimizer, e.g. SFT then RL."""
        if not lr > 0:
            raise ValueError(f"lr={lr} must be > 0")
        self.scheduler.max_lr = self.scheduler.min_lr = float(lr)
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            for group in opt.optimizer.param_groups:
                group.update({k: float(lr) for k in ("max_lr", "min_lr") if k in group})
                group["lr"] = self.scheduler.get_lr(group)

    def export_hf(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream of full HF-named tensors (collective; see megatron_ext.convert.export_hf)."""
        from megatron_ext import convert

        return convert.export_hf(self.model)

    def parameters_fp32(self) -> dict[str, torch.Tensor]:
        """This rank's parameters by global name, as fp32 copies (for tests and debugging)."""
        from megatron_ext.convert import global_named_parameters

        return {n: p.detach().float().clone() for n, p in global_named_parameters(self.model[0])}

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _layout(self) -> dict[str, int]:
        from megatron.core import parallel_state

        return {"tp": parallel_state.get_tensor_model_parallel_world_size(), "pp": self.pp_size, "dp": self.dp_size}

    def _sharded_state_dict(self, *, is_loading: bool, with_optimizer: bool = True) -> dict[str, Any]:
        # dp_reshardable: exact and fully parallel. The model reshards across any TP/PP; the optimizer state only
        # loads into the layout it was saved with (megatron-core 0.16's fully_reshardable format fails to load
        # torch Adam's per-parameter "step").
        meta = {"distrib_optim_sharding_type": "dp_reshardable"}
        model_sd = models.unwrap(self.model[0]).sharded_state_dict(metadata=meta)
        if not with_optimizer:
            return {"model": model_sd}
        return {"model": model_sd,
                "optimizer": self.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=meta)}

    def save(self, root: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
        """Save a complete checkpoint under root/iter_XXXXXXX and point root/latest at it. Collective."""
        from megatron.core import dist_checkpointing

        root = Path(root)
        final = root / f"iter_{self.step:07d}"
        tmp = root / f".iter_{self.step:07d}.tmp"
        rank = dist.get_rank()
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir()
        dist.barrier()
        dist_checkpointing.save(self._sharded_state_dict(is_loading=False), str(tmp))
        torch.save(_rng_state(), tmp / f"rng_rank{rank:05d}.pt")
        dist.barrier()
        if rank == 0:
            common = {"step": self.step, "adam_steps": self._adam_steps(), "scheduler": self.scheduler.state_dict(), "extra": extra or {},
                      "nonfinite_total": self.nonfinite_total, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                      "world_size": dist.get_world_size(), "model": self.spec.to_hf_config(), "layout": self._layout(),
                      "policy_config": json.loads(json.dumps(asdict(self.cfg), default=str))}
            torch.save(common, tmp / STATE_FILE)
            (tmp / COMPLETE).write_text("ok\n")
            if final.exists():
                import shutil

                shutil.rmtree(final)
            tmp.rename(final)
            _atomic_write(root / LATEST, final.name + "\n")
        dist.barrier()
        return final

    def load(self, root: str | os.PathLike) -> dict[str, Any]:
        """Load the newest complete checkpoint under root (or root itself if it is one). Returns `extra`."""
        from megatron.core import dist_checkpointing

        path = latest_checkpoint(root)
        common = torch.load(path / STATE_FILE, weights_only=False)
        if common["model"] != self.spec.to_hf_config():
            diff = {k: (common["model"].get(k), v) for k, v in self.spec.to_hf_config().items()
                    if common["model"].get(k) != v}
            raise ValueError(f"checkpoint {path} is for a different model shape: (saved, current) = {diff}")
        same_layout = common["layout"] == self._layout()
        if same_layout:
            self._materialize_optimizer_state()
        else:
            logger.warning("checkpoint layout %s differs from %s: loading the model weights (resharded); the "
                           "optimizer state starts fresh", common["layout"], self._layout())
        state = dist_checkpointing.load(self._sharded_state_dict(is_loading=True, with_optimizer=same_layout),
                                        str(path))
        with torch.no_grad():  # fp32 main params are the model's leaf params: copy into them without autograd
            models.unwrap(self.model[0]).load_state_dict(state["model"], strict=True)
            if same_layout:
                self.optimizer.load_state_dict(state["optimizer"])
                self._restore_adam_steps(common["adam_steps"])
            else:
                self.optimizer.reload_model_params()
        self.scheduler.load_state_dict(common["scheduler"])
        self.step = common["step"]
        self.nonfinite_total = common["nonfinite_total"]
        self.nonfinite_in_a_row = common["nonfinite_in_a_row"]
        rng_file = path / f"rng_rank{dist.get_rank():05d}.pt"
        if common["world_size"] == dist.get_world_size() and rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            logger.warning("checkpoint was saved with world size %d, now %d: RNG states not restored",
                           common["world_size"], dist.get_world_size())
        return common["extra"]


    def _adam_steps(self) -> float:
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            for state in opt.optimizer.state.values():
                return float(state["step"])
        return 0.0

    def _restore_adam_steps(self, steps: float) -> None:
        """megatron-core 0.16 on the torch-Adam path (no Apex/TE) restores Adam's per-parameter "step" from the
        live optimizer, not the checkpoint, and as one tensor shared by every parameter; Adam's bias correction then
        drifts after a resume. Set each parameter's own step from the value recorded at save time."""
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            for state in opt.optimizer.state.values():
                state["step"] = torch.tensor(steps, dtype=torch.float32)

    def _materialize_optimizer_state(self) -> None:
        """A fresh torch Adam has no state yet, and the distributed optimizer's state_dict needs its "step": take
        one zero-gradient step at lr 0 (Megatron does the same for its FSDP format) before loading over it."""
        inner = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        if all(len(opt.optimizer.state) for opt in inner):
            return
        saved = [g["lr"] for opt in inner for g in opt.optimizer.param_groups]
        for opt in inner:
            for g in opt.optimizer.param_groups:
                g["lr"] = 0.0
            opt._init_optimizer_states_with_dummy_values()
        lrs = iter(saved)
        for opt in inner:
            for g in opt.optimizer.param_groups:
                g["lr"] = next(lrs)


def latest_checkpoint(root: str | os.PathLike) -> Path:
    """The newest complete checkpoint directory under root (or root itself if complete)."""
    root = Path(root)
    if (root / COMPLETE).exists():
        return root
    complete = sorted(p for p in root.glob("iter_*") if (p / COMPLETE).exists()) if root.exists() else []
    named = root / LATEST
    if named.exists():
        candidate = root / named.read_text().strip()
        if (candidate / COMPLETE).exists():
            return candidate
    if not complete:
        raise FileNotFoundError(f"no complete checkpoint under {root} (looked for iter_*/{COMPLETE}); "
                                "start without resuming, or point at a directory holding a finished save")
    return complete[-1]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": get_cuda_rng_tracker().get_states()}


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])
