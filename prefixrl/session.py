"""One `prefixrl train` run, wired from a TrainConfig: data, policy, engine, pool, metrics, checkpoints, evaluation.

`prefixrl.train.main` checks the run directory, installs the stop-signal handler, initialises Megatron and calls
`run(cfg, resume=..., should_stop=...)`. The phases:

    data      data.problems + data.traces (or data.pool); data.problems=None prepares the synthetic task under
              <out_dir>/synthetic once (`prefixrl.pipeline.prepare_synthetic`: tokenizer, SFT base, sourced traces)
    policy    MegatronPolicy on model.path; on resume, policy.load(checkpoints) restores weights, optimizer, RNG,
              step and the FLOP counter, and the engine gets the loaded weights by a sync before the first step
    pool      built from problems + traces with the prefix.* settings (or read from data.pool)
    loop      prefixrl.train.rl_loop; metrics to metrics.jsonl / TensorBoard; checkpoints via policy.save
    end       curves.png and the `finished` marker with the summary (only when all steps are done)

Megatron and vLLM are imported inside the functions, never at import time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefixrl.config import TrainConfig
from prefixrl.pipeline import READY, load_tokenizer, make_verifier, prompt_formatter, tokenizer_name
from prefixrl.records import PrefixedProblem, Problem

logger = logging.getLogger(__name__)

SYNTHETIC_DIR = "synthetic"
"""Subdirectory of logging.out_dir where data.problems=None prepares the synthetic task."""


@dataclass(slots=True)
class RunData:
    """Where the run's model and data come from (after the synthetic preparation, if any)."""

    model_path: str
    tokenizer_path: str
    problems_path: str | None
    traces_dir: Path
    eval_problems_path: str | None
    engine: Any = None
    """An engine already built on model_path (by the synthetic preparation), or None."""


def resolve_data(cfg: TrainConfig, out: Path) -> RunData:
    """Paths of the run's inputs; with data.problems=None, the synthetic task (prepared once under out/synthetic)."""
    d = cfg.data
    if d.problems is not None or d.pool is not None:
        if cfg.model.path.startswith("tiny-"):
            raise ValueError(f"model.path={cfg.model.path!r} is a preset with random weights; RL needs a trained "
                             "base model: give an HF model directory (e.g. the base/ of prepare_synthetic)")
        return RunData(model_path=cfg.model.path, tokenizer_path=cfg.model.tokenizer or cfg.model.path,
                       problems_path=d.problems, traces_dir=Path(d.traces) if d.traces else out / "traces",
                       eval_problems_path=d.eval_problems)  # fmt: skip
    if cfg.model.path != "tiny-llama" or cfg.model.tokenizer is not None or d.verifier != "arith":
        raise ValueError(
            "data.problems=None runs the synthetic arithmetic task, which brings its own tiny-llama base model and "
            f"tokenizer: set model.path=tiny-llama, model.tokenizer=None, data.verifier=arith (got {cfg.model.path!r}"
            f", {cfg.model.tokenizer!r}, {d.verifier!r}), or give data.problems and data.traces for your own data")
    syn_dir = out / SYNTHETIC_DIR
    engine = None
    if not (syn_dir / READY).exists():
        from prefixrl.demo import DemoSettings
        from prefixrl.pipeline import prepare_synthetic

        logger.info("data.problems=None: preparing the synthetic task under %s (SFT base model, hard problems, "
                    "rejection sampling; a few minutes on CPU)", syn_dir)  # fmt: skip
        engine = prepare_synthetic(syn_dir, s=DemoSettings(seed=cfg.seed), traces="sourced").engine
    return RunData(model_path=str(syn_dir / "base"), tokenizer_path=str(syn_dir / "tokenizer.model"),
                   problems_path=str(syn_dir / "problems.jsonl"), traces_dir=syn_dir / "traces",
                   eval_problems_path=d.eval_problems or str(syn_dir / "heldout.jsonl"), engine=engine)  # fmt: skip


PREPARE_PROGRAM = """
import sys
from megatron_ext import runtime
from prefixrl.demo import DemoSettings
from prefixrl.pipeline import prepare_synthetic
runtime.initialize(seed=int(sys.argv[2]))
try:
    syn = prepare_synthetic(sys.argv[1], s=DemoSettings(seed=int(sys.argv[2])), traces="sourced")
    syn.engine.shutdown()
finally:
    runtime.shutdown()
"""
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def prepare_synthetic_for_ranks(cfg: TrainConfig, out: Path, *, rank: int, timeout_s: float = 7200.0) -> None:
    """Multi-rank runs with data.problems=None: rank 0 prepares out/synthetic in a separate one-process program
    (SFT base + sourcing need a world of one); the other ranks wait for its READY marker. Call before
    runtime.initialize. A failure on rank 0 raises there, and torchrun then stops the waiting ranks."""
    import subprocess
    import sys

    syn_dir = out / SYNTHETIC_DIR
    if (syn_dir / READY).exists():
        return
    if rank == 0:
        logger.info("data.problems=None: rank 0 prepares the synthetic task under %s (a few minutes on CPU)", syn_dir)
        env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_ENV and not k.startswith("TORCHELASTIC")}
        subprocess.run([sys.executable, "-c", PREPARE_PROGRAM, str(syn_dir), str(cfg.seed)], env=env, check=True)
        return
    deadline = time.monotonic() + timeout_s
    while not (syn_dir / READY).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: rank 0 did not finish preparing {syn_dir} within {timeout_s:.0f} s")
        time.sleep(min(2.0, timeout_s / 10))


def load_problems_file(cfg: TrainConfig, path: str) -> list[Problem]:
    from prefixrl.data import ProblemSetConfig, load_problems

    d = cfg.data
    return load_problems(ProblemSetConfig(path=path, id_field=d.id_field, prompt_field=d.prompt_field,
                                          answer_field=d.answer_field))  # fmt: skip


def build_pool(cfg: TrainConfig, data: RunData, *, tokenizer: Any, format_prompt: Callable[[Problem], list[int]],
               verifier: Any) -> list[PrefixedProblem]:
    """data.pool as written by `prefixrl prefixes`, else problems + traces cut with the prefix.* settings."""
    from prefixrl import prefixes
    from prefixrl.sourcer import load_traces

    if cfg.data.pool is not None:
        pool = prefixes.read_pool(cfg.data.pool)
    else:
        p = cfg.prefix
        if p.strategy != "fixed":
            raise ValueError(f"prefix.strategy={p.strategy!r} is not wired into prefixrl train yet; use fixed")
        assert data.problems_path is not None
        problems = load_problems_file(cfg, data.problems_path)
        if not data.traces_dir.exists():
            raise FileNotFoundError(f"no traces at {data.traces_dir}; run `prefixrl sample` first or set data.traces")
        traces = load_traces(data.traces_dir, problems=problems, verifier=verifier)
        pool, _ = prefixes.build_pool(
            problems, traces, strategy=prefixes.FixedRandomCuts(cfg=prefixes.CutConfig(
                num_cuts=p.num_cuts, low=p.low, high=p.high, seed=p.seed)),
            cfg=prefixes.PoolConfig(max_prompt_tokens=cfg.max_prompt_tokens, unprefixed_copies=p.unprefixed_copies,
                                    too_long=prefixes.TooLongPolicy(p.too_long), shuffle_seed=p.seed),
            format_prompt=format_prompt, policy_tokenizer_name=tokenizer_name(tokenizer), policy_tokenizer=tokenizer,
        )  # fmt: skip
    if len(pool) < cfg.rollout.prompts_per_step:
        raise ValueError(f"the pool has {len(pool)} prompts, fewer than rollout.prompts_per_step="
                         f"{cfg.rollout.prompts_per_step}; source more traces or lower rollout.prompts_per_step")
    return pool


def build_policy(cfg: TrainConfig, model_path: str) -> Any:
    from megatron_ext.models import PrecisionConfig
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig

    o = cfg.optim
    decay = max(0, cfg.steps - o.warmup_steps) if o.lr_schedule == "cosine" else 0
    return MegatronPolicy(PolicyConfig(
        model=model_path,
        precision=PrecisionConfig(dtype=cfg.model.dtype, fp8=cfg.model.fp8, fp8_recipe=cfg.model.fp8_recipe),
        optim=OptimizerSettings(lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.betas[0],
                                adam_beta2=o.betas[1], adam_eps=o.eps, clip_grad=o.clip_grad,
                                warmup_steps=o.warmup_steps, decay_steps=decay, lr_schedule=o.lr_schedule),
        micro_batch_size=o.micro_batch_size, max_seq_len=o.max_seq_len, temperature=cfg.rollout.temperature,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    ))  # fmt: skip


def check_supported(cfg: TrainConfig) -> None:
    """Settings the typed config accepts but this trainer does not implement yet: fail at setup, not silently."""
    r = cfg.rl
    if r.loss != "policy_gradient" or r.kl_coef != 0.0 or r.tis_cap is not None:
        raise ValueError(f"rl.loss={r.loss!r}, rl.kl_coef={r.kl_coef}, rl.tis_cap={r.tis_cap}: prefixrl train "
                         "implements the paper's loss only; use rl.loss=policy_gradient rl.kl_coef=0 rl.tis_cap=None")
    if cfg.mismatch.sample_fraction != 1.0:
        logger.warning("mismatch.sample_fraction=%s is ignored: every rollout is compared", cfg.mismatch.sample_fraction)


def make_evaluator(cfg: TrainConfig, problems: Sequence[Problem], *, generate_fn: Any, verifier: Any,
                   format_prompt: Callable[[Problem], list[int]]) -> Callable[[int], dict[str, float]]:
    """step -> unprefixed pass@k metrics ("eval/pass@k") on eval steps (every eval.every_steps and the last)."""
    from prefixrl.evaluation import EvalConfig, evaluate

    e = cfg.eval
    chosen = list(problems)[: e.num_problems] if e.num_problems else list(problems)
    ecfg = EvalConfig(num_samples=e.num_samples, temperature=e.temperature, max_tokens=e.max_new_tokens, seed=cfg.seed)

    def run_eval(step: int) -> dict[str, float]:
        if not e.every_steps or not chosen or (step % e.every_steps and step != cfg.steps):
            return {}
        report = evaluate(chosen, generate_fn=generate_fn, verifier=verifier, format_prompt=format_prompt, cfg=ecfg)
        return {k: float(v) for k, v in report.metrics("eval").items()}

    return run_eval


def prune_checkpoints(ckpt: Path, *, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (after a successful save)."""
    import shutil

    done = sorted(p for p in ckpt.glob("iter_*") if (p / "complete").exists())
    for old in done[:-keep_last]:
        shutil.rmtree(old)


def run(cfg: TrainConfig, *, resume: bool, should_stop: Callable[[], bool]) -> None:
    """The run (module docstring). Megatron's runtime must be initialised."""
    import torch.distributed as dist
    from tqdm import tqdm

    from megatron_ext.spec import ModelSpec
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.engine.mismatch import MismatchGate
    from prefixrl.flops import FlopCounter
    from prefixrl.pipeline import build_engine, num_params
    from prefixrl.runlog import MetricsLog, first_last, read_metrics, write_plots
    from prefixrl.sourcer import charge_sourcing, read_progress
    from prefixrl.train import FINISHED, LoopSettings, rl_loop, run_paths, sync_weights

    t_start = time.perf_counter()
    check_supported(cfg)
    rank, world = dist.get_rank(), dist.get_world_size()
    out, ckpt = run_paths(cfg)
    data = resolve_data(cfg, out)
    cfg.check(world, spec=ModelSpec.from_pretrained(data.model_path))
    tokenizer = load_tokenizer(data.tokenizer_path)
    verifier, fmt = make_verifier(cfg.data.verifier), prompt_formatter(tokenizer, user_template=cfg.data.user_template)
    pool = build_pool(cfg, data, tokenizer=tokenizer, format_prompt=fmt, verifier=verifier)

    policy = build_policy(cfg, data.model_path)
    flops = FlopCounter(num_params=num_params(data.model_path, include_embeddings=False))
    start = 0
    if resume:
        extra = policy.load(ckpt)
        start, flops = int(extra["step"]), FlopCounter.from_dict(extra["flops"])
        logger.info("resumed from %s at step %d", ckpt, start)
    elif data.traces_dir.exists():
        charge_sourcing(flops, read_progress(data.traces_dir)[0])
    r = cfg.rollout
    engine = data.engine or build_engine(data.model_path, max_model_len=r.max_model_len, seed=cfg.seed,
                                         kv_cache_gib=r.kv_cache_gib, tensor_parallel=cfg.parallel.engine_tensor_parallel,
                                         gpu_memory_utilization=r.gpu_memory_utilization,
                                         external_launcher=world > 1)  # fmt: skip
    if start:
        sync_weights(policy, engine)  # the engine starts from model_path; give it the checkpoint's weights

    eval_problems = (load_problems_file(cfg, data.eval_problems_path) if data.eval_problems_path else
                     list({p.problem.problem_id: p.problem for p in pool if not p.is_prefixed}.values()))
    evaluate = make_evaluator(cfg, eval_problems, generate_fn=EngineGenerateFn(engine, tokenizer), verifier=verifier,
                              format_prompt=fmt)  # fmt: skip
    # Every rank computes the same rollouts and metrics (one engine sharded over all ranks); rank 0 writes them.
    sink = MetricsLog(out, jsonl=cfg.logging.jsonl and rank == 0, tensorboard=cfg.logging.tensorboard and rank == 0,
                      resume_step=start)  # fmt: skip
    bar = tqdm(total=cfg.steps, initial=start, desc="prefixrl train", unit="step", dynamic_ncols=True,
               disable=rank != 0)  # fmt: skip

    def log(step: int, m: dict[str, float]) -> None:
        sink.write(step, m)
        bar.update(1)
        bar.set_postfix({k.split("/")[-1]: round(m[k], 3) for k in ("reward/prefixed", "reward/unprefixed") if k in m})

    def save(step: int) -> None:
        policy.save(ckpt, extra={"step": step, "flops": flops.to_dict()})
        if rank == 0:
            prune_checkpoints(ckpt, keep_last=cfg.checkpoint.keep_last)

    if start == 0 and (m0 := evaluate(0)):
        sink.write(0, m0)
    settings = LoopSettings(steps=cfg.steps, prompts_per_step=r.prompts_per_step, n=r.n, max_new_tokens=r.max_new_tokens,
                            temperature=r.temperature, top_p=r.top_p, estimator=cfg.rl.estimator, seed=cfg.seed,
                            checkpoint_every=cfg.checkpoint.every_steps)  # fmt: skip
    gate = MismatchGate(max_token_mult_prob_error=cfg.mismatch.threshold,
                        on_exceed="raise" if cfg.mismatch.action == "stop" else "warn")  # fmt: skip
    try:
        rl_loop(policy=policy, engine=engine, pool=pool, s=settings, tokenizer=tokenizer, verifier=verifier,
                flops=flops, gate=gate, start_step=start, log=log, save=save, evaluate=evaluate,
                should_stop=should_stop)  # fmt: skip
    finally:
        bar.close()
        sink.close()
        engine.shutdown()
    last = policy.step
    if rank != 0:
        return
    history = [h for h in read_metrics(out / "metrics.jsonl") if "reward/mean" in h]
    if last < cfg.steps:
        logger.warning("stopped at step %d of %d; the checkpoint is in %s and the next start resumes it", last,
                       cfg.steps, ckpt)  # fmt: skip
        return
    if cfg.logging.plots and history:
        write_plots(out / "curves.png", history)
    summary = {
        "run_name": cfg.run_name, "steps": last, "pool_size": len(pool), "resumed_from": start,
        "reward_prefixed_first_last": first_last(history, "reward/prefixed"),
        "reward_unprefixed_first_last": first_last(history, "reward/unprefixed"),
        "mismatch_max": max((h.get("mismatch/token_mult_prob_error", 1.0) for h in history), default=float("nan")),
        "eval_last": {k: v for k, v in history[-1].items() if k.startswith("eval/")} if history else {},
        "flops_total": flops.total(include_sourcing=True), "session_s": time.perf_counter() - t_start,
        "world_size": world, "tensor_parallel": cfg.parallel.tensor_parallel,
        "pipeline_parallel": cfg.parallel.pipeline_parallel, "engine_tensor_parallel": cfg.parallel.engine_tensor_parallel,
    }  # fmt: skip
    (out / FINISHED).write_text(json.dumps(summary, indent=2) + "\n")
