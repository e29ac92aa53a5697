"""The PrefixRL driver loop (method notes 2.11, stage 2), written against small protocols.

Each step: draw prompts from the prefixed/unprefixed pool -> generate n completions per prompt with the colocated
engine -> reward on prefix + completion -> advantages within each (problem, prefix) group -> check the trainer's
log-probs against the engine's (weights in sync?) -> Megatron train step on completion tokens only -> push the new
weights to the engine -> metrics. Evaluation and checkpoints every k steps.

The policy and the engine are any objects with the methods below: `megatron_ext.policy.MegatronPolicy` and
`prefixrl.engine.vllm.VLLMEngine` in real runs, fakes in unit tests. Nothing here imports megatron or vllm.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from prefixrl import advantages as adv
from prefixrl.batching import RLBatch
from prefixrl.engine.mismatch import MismatchGate, mismatch_metrics
from prefixrl.flops import FlopCounter
from prefixrl.protocols import Tokenizer, Verifier
from prefixrl.records import FinishReason, PrefixedProblem, Rollout, RolloutGroup

if TYPE_CHECKING:
    from prefixrl.config import TrainConfig

logger = logging.getLogger(__name__)


class Policy(Protocol):
    def train_step(self, batch: RLBatch) -> dict[str, float]: ...
    def logprobs(self, batch: RLBatch) -> torch.Tensor: ...
    def export_hf(self) -> Iterable[tuple[str, torch.Tensor]]: ...
    def save(self, root: Any, *, extra: dict[str, Any] | None = None) -> Any: ...
    def load(self, root: Any) -> dict[str, Any]: ...


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[Any]]: ...
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Any: ...


@dataclass(kw_only=True, frozen=True)
class LoopSettings:
    """The knobs the loop itself reads (a view of prefixrl.config.TrainConfig)."""

    steps: int
    """Optimizer steps to run (in total, counting steps done before a resume)."""
    prompts_per_step: int
    """Prompts (groups) per step."""
    n: int = 8
    """Completions per prompt (group size)."""
    max_new_tokens: int = 256
    """Generation cap per completion."""
    temperature: float = 1.0
    """Sampling temperature (the trainer scales its logits by the same value)."""
    top_p: float = 1.0
    """Nucleus sampling; keep 1.0 for an exact log-prob check."""
    estimator: str = "reinforce"
    """Advantage estimator name (prefixrl.advantages)."""
    truncated_reward: float = 0.0
    """Reward of a completion that hit the generation cap."""
    seed: int = 0
    """Seed of the pool order and the engine's sampling."""
    checkpoint_every: int = 0
    """Save every k steps (0: only at the end)."""


def draw_prompts(pool: Sequence[PrefixedProblem], *, step: int, k: int, seed: int) -> list[PrefixedProblem]:
    """The step's prompts: one pass over a per-epoch shuffle of the pool, so a resumed run sees the same order."""
    per_epoch = max(1, len(pool) // k)
    epoch, offset = divmod(step, per_epoch)
    order = list(range(len(pool)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [pool[i] for i in order[offset * k : offset * k + k]]


def generate_groups(engine: Engine, prompts: Sequence[PrefixedProblem], *, s: LoopSettings, step: int,
                    tokenizer: Tokenizer, verifier: Verifier) -> list[RolloutGroup]:
    """n completions per prompt, each scored on prefix + completion (a truncated completion gets truncated_reward)."""
    outs = engine.generate([p.input_ids for p in prompts], n=s.n, max_tokens=s.max_new_tokens,
                           temperature=s.temperature, top_p=s.top_p, seed=s.seed * 100_003 + step)
    groups = []
    for prompt, completions in zip(prompts, outs):
        rollouts = []
        for c in completions:
            text = tokenizer.decode(c.token_ids)
            finish = FinishReason(c.finish_reason)
            ok = verifier(prompt.problem, prompt.prefix_text + text)
            reward = s.truncated_reward if finish != FinishReason.STOP else float(ok)
            rollouts.append(Rollout(input_ids=prompt.input_ids, completion_ids=list(c.token_ids), text=text,
                                    finish_reason=finish, reward=reward, logprobs=list(c.logprobs)))
        groups.append(RolloutGroup(prompt=prompt, rollouts=rollouts))
    return groups


def rollout_metrics(groups: Sequence[RolloutGroup]) -> dict[str, float]:
    """Reward split by prefixed / unprefixed prompts, cut fractions, lengths and zero-advantage groups."""
    pre = [r.reward for g in groups if g.prompt.is_prefixed for r in g.rollouts]
    unp = [r.reward for g in groups if not g.prompt.is_prefixed for r in g.rollouts]
    lengths = [len(r.completion_ids) for g in groups for r in g.rollouts]
    out = {
        "reward/mean": sum(pre + unp) / max(1, len(pre + unp)),
        "prefix/zero_adv_groups": sum(g.is_degenerate for g in groups) / max(1, len(groups)),
        "rollout/mean_len": sum(lengths) / max(1, len(lengths)),
        "rollout/truncated": sum(r.finish_reason != FinishReason.STOP for g in groups for r in g.rollouts)
        / max(1, len(lengths)),
    }
    if pre:
        out["reward/prefixed"] = sum(pre) / len(pre)
        out["prefix/cut_frac"] = sum(g.prompt.cut_frac for g in groups if g.prompt.is_prefixed) / max(
            1, sum(g.prompt.is_prefixed for g in groups))
    if unp:
        out["reward/unprefixed"] = sum(unp) / len(unp)
    return out


def sync_weights(policy: Policy, engine: Engine) -> float:
    """Stream the policy's HF-named tensors into the engine; returns seconds."""
    start = time.perf_counter()
    engine.update_weights(policy.export_hf())
    return time.perf_counter() - start


def check_weights(policy: Policy, batch: RLBatch, gate: MismatchGate) -> dict[str, float]:
    """Trainer log-probs of the tokens the engine just sampled vs the engine's own (both with the current weights)."""
    assert batch.old_logprobs_BT is not None
    trainer_BT = policy.logprobs(batch)
    metrics = {k: float(v) for k, v in mismatch_metrics(trainer_BT, batch.old_logprobs_BT, batch.loss_mask_BT).items()}
    gate(metrics)
    return metrics


def rl_loop(*, policy: Policy, engine: Engine, pool: Sequence[PrefixedProblem], s: LoopSettings,
            tokenizer: Tokenizer, verifier: Verifier, flops: FlopCounter, gate: MismatchGate, start_step: int = 0,
            log: Callable[[int, dict[str, float]], None] = lambda step, m: None,
            save: Callable[[int], None] = lambda step: None,
            evaluate: Callable[[int], dict[str, float]] = lambda step: {},
            should_stop: Callable[[], bool] = lambda: False) -> list[dict[str, float]]:
    """Stage 2 of PrefixRL: plain on-policy RL over the pool of prefixed and unprefixed prompts.

    After each step: `evaluate(step)` adds its metrics (it decides whether this step evaluates), `log` records them,
    and `save(step)` runs every `checkpoint_every` steps, at the last step, and when `should_stop()` turns true (a
    preemption signal), after which the loop returns early."""
    estimator = adv.get_estimator(s.estimator)
    history = []
    for step in range(start_step, s.steps):
        t0 = time.perf_counter()
        prompts = draw_prompts(pool, step=step, k=s.prompts_per_step, seed=s.seed)
        groups = generate_groups(engine, prompts, s=s, step=step, tokenizer=tokenizer, verifier=verifier)
        t1 = time.perf_counter()
        rewards_Gn = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        batch = RLBatch.from_groups(groups, estimator(rewards_Gn), pad_id=tokenizer.pad_id)
        metrics = {**rollout_metrics(groups), **check_weights(policy, batch, gate)}
        t2 = time.perf_counter()
        metrics.update(policy.train_step(batch))
        t3 = time.perf_counter()
        metrics["timing/sync"] = sync_weights(policy, engine)
        seq_tokens = int(batch.seq_lens_B.sum())
        flops.add_sampling(seq_tokens)
        flops.add_forward_only(seq_tokens)
        flops.add_training(seq_tokens)
        metrics.update({"timing/generate": t1 - t0, "timing/train": t3 - t2, "timing/other": t2 - t1,
                        "flops/total": flops.total(include_sourcing=True), "step": step + 1})
        metrics.update(evaluate(step + 1))
        history.append(metrics)
        log(step + 1, metrics)
        stop = should_stop()
        if stop or step + 1 == s.steps or (s.checkpoint_every and (step + 1) % s.checkpoint_every == 0):
            save(step + 1)
        if stop:
            logger.warning("stop requested: checkpointed step %d of %d and leaving the loop", step + 1, s.steps)
            break
    return history


# ----------------------------------------------------------------------------------------------------- the entry
FINISHED = "finished"
"""Marker (holding the run summary as JSON) written when a run completes all its steps; such a directory is refused."""
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
"""Signals that make the run checkpoint at the end of the current step and exit 0 (slurm/prefixrl.sbatch sends
SIGUSR1 before the time limit and requeues the job)."""


class StopRequest:
    """Context manager: while active, the signals in STOP_SIGNALS set a flag instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            logger.warning("received %s: checkpointing at the end of this step, then exiting",
                           signal.Signals(signum).name)  # fmt: skip
        self.signum = signum

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_paths(cfg: TrainConfig) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) of a config."""
    out = Path(cfg.logging.out_dir)
    return out, Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else out / "checkpoints"


def check_run_dir(cfg: TrainConfig) -> bool:
    """Apply checkpoint.resume to the run directory before anything heavy starts; returns whether to resume.

    A directory with a finished run is always refused (never overwritten silently)."""
    out, ckpt = run_paths(cfg)
    if (out / FINISHED).exists():
        raise FileExistsError(f"{out} holds a finished run ({out / FINISHED}); choose a new logging.out_dir, or "
                              f"delete {out / FINISHED} to extend that run with more steps")  # fmt: skip
    has_ckpt = any((p / "complete").exists() for p in ckpt.glob("iter_*")) if ckpt.exists() else False
    if cfg.checkpoint.resume == "must" and not has_ckpt:
        raise FileNotFoundError(f"checkpoint.resume=must but {ckpt} holds no complete checkpoint; set "
                                "checkpoint.resume=auto to start fresh")  # fmt: skip
    if cfg.checkpoint.resume == "never" and has_ckpt:
        raise FileExistsError(f"checkpoint.resume=never but {ckpt} already holds checkpoints of an unfinished run; "
                              "choose a new logging.out_dir or set checkpoint.resume=auto to continue it")  # fmt: skip
    if not has_ckpt and (out / "metrics.jsonl").exists() and cfg.checkpoint.resume == "auto":
        logger.warning("%s has metrics but no checkpoint: the run starts from step 0 and its metrics are replaced", out)
    return has_ckpt


def main(cfg_dict: dict[str, Any]) -> None:
    """Entry of `prefixrl train` and of nemo-run tasks: one PrefixRL run from a `prefixrl.config.to_dict` dict.

    Layouts: one process (Megatron TP = PP = 1, in-process vLLM engine), or W ranks under torchrun where every rank
    hosts a shard of one vLLM engine with TP = W (vLLM's external_launcher backend) next to its Megatron shard
    (any TP x PP x DP = W). Rank 0 writes to logging.out_dir: config.json, metrics.jsonl (+ tb/ and curves.png),
    and `finished` (the summary) when all steps are done; every rank writes its part of checkpoints/ (every
    checkpoint.every_steps, at the end and on SIGUSR1/SIGTERM). Resumes per checkpoint.resume.
    """
    from megatron_ext import runtime
    from prefixrl.config import from_dict

    cfg = from_dict(cfg_dict)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    cfg.check(world)
    check_colocation(cfg, world)
    resume = check_run_dir(cfg)
    out, _ = run_paths(cfg)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, cfg, resume=resume)
    if world > 1 and cfg.data.problems is None and cfg.data.pool is None:
        from prefixrl.session import prepare_synthetic_for_ranks

        prepare_synthetic_for_ranks(cfg, out, rank=rank)
    with StopRequest() as stop:
        runtime.initialize(tensor_parallel=cfg.parallel.tensor_parallel,
                           pipeline_parallel=cfg.parallel.pipeline_parallel, seed=cfg.seed)  # fmt: skip
        try:
            from prefixrl.session import run

            run(cfg, resume=resume, should_stop=stop)
        finally:
            runtime.shutdown()


def check_colocation(cfg: TrainConfig, world: int) -> None:
    """The colocated engine layouts the trainer runs: one process, or one engine spanning all W ranks (TP = W)."""
    etp = cfg.parallel.engine_tensor_parallel
    if world > 1 and etp != world:
        raise ValueError(
            f"launched with {world} ranks and parallel.engine_tensor_parallel={etp}: the trainer colocates ONE vLLM "
            f"engine sharded over all ranks (vLLM's external_launcher backend), so set parallel.engine_tensor_parallel"
            f"={world}. Several engine replicas (engine TP < world size, each generating part of the prompts) are "
            "not wired yet"
        )


def _write_config(out: Path, cfg: TrainConfig, *, resume: bool) -> None:
    from prefixrl.config import to_dict

    path = out / "config.json"
    new = to_dict(cfg)
    if resume and path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            logger.warning("resuming with config sections changed since the last start: %s", changed)
    path.write_text(json.dumps(new, indent=2) + "\n")
