"""`prefixrl demo` / `make demo`: the whole PrefixRL pipeline on a CPU box, on the real stack.

synthetic task + in-process tokenizer -> tiny Llama-shaped base model SFT'd on worked solutions (Megatron-Core)
-> colocated vLLM engine -> hard-problem selection (pass@k) -> rejection sampling of correct traces -> prefix pool
(3 cuts in [0.4, 0.8], 3:1 mix) -> PrefixRL (Megatron train step, weight sync into vLLM every step, log-prob check)
-> unprefixed pass@k before and after, a table, metrics.jsonl and plots.

Layout: one process, Megatron TP=1 with vLLM TP=1 in the same process. On 2 cores a TP=2 Megatron run would need a
second process hosting a second vLLM engine (external_launcher); one process keeps both cores for the matmuls and
halves the memory. TP=2 and PP=2 are exercised by the dist test tier.

Megatron and vLLM are imported inside `run_demo`, never at import time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class DemoSettings:
    """Sizes of the demo run (defaults: about 10 minutes on 2 cores)."""

    sft_steps: int = 300
    """SFT steps of the tiny base model."""
    sft_batch: int = 64
    """Sequences per SFT step."""
    hard_pool: int = 64
    """Hard training problems kept for sourcing and RL."""
    select_k: int = 8
    """Samples per problem for hard-problem selection (pass@k)."""
    source_cap: int = 64
    """Rejection-sampling attempts per problem."""
    rl_steps: int = 30
    """PrefixRL steps."""
    prompts_per_step: int = 16
    """Prompts (groups) per RL step."""
    n: int = 8
    """Completions per prompt."""
    eval_samples: int = 8
    """Samples per problem for unprefixed pass@k before/after."""
    rl_lr: float = 5e-4
    """PrefixRL learning rate."""
    seed: int = 0
    """Seed of everything."""
    traces: Literal["sourced", "sourced+oracle"] = "sourced"
    """Where traces come from: rejection sampling only, or (smoke runs) the task's worked solution for problems that
    rejection sampling left unsolved."""


def run_demo(out_dir: str | os.PathLike, *, s: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Run the pipeline into a fresh `out_dir`; returns the summary (also written to summary.json)."""
    import torch

    from megatron_ext import runtime
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.engine.mismatch import MismatchGate
    from prefixrl.evaluation import EvalConfig, evaluate
    from prefixrl.flops import FlopCounter
    from prefixrl.pipeline import (SYNTHETIC_GEN_TOKENS, SYNTHETIC_MAX_LEN, num_params, prepare_synthetic,
                                   prompt_formatter, tokenizer_name)
    from prefixrl.prefixes import CutConfig, FixedRandomCuts, PoolConfig, build_pool
    from prefixrl.runlog import first_last, write_plots
    from prefixrl.sourcer import charge_sourcing, load_traces, read_progress
    from prefixrl.tasks.arith import ArithVerifier
    from prefixrl.train import LoopSettings, rl_loop

    out = Path(out_dir)
    if (out / "summary.json").exists():
        raise FileExistsError(f"{out} holds a finished demo run; choose a new output directory")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    runtime.initialize(tensor_parallel=1, seed=s.seed)
    try:
        # Task + tokenizer, SFT base model, engine, hard-problem selection, rejection sampling (prefixrl.pipeline).
        syn = prepare_synthetic(out, s=s, traces=s.traces)
        tokenizer, splits, base_dir, engine, select, hard = (syn.tokenizer, syn.splits, syn.base_dir, syn.engine,
                                                             syn.select, syn.hard)
        sft_losses = syn.sft_losses
        timings.update(syn.timings)
        verifier, fmt = ArithVerifier(), prompt_formatter(tokenizer)
        generate = EngineGenerateFn(engine, tokenizer)
        eval_cfg = EvalConfig(num_samples=s.eval_samples, temperature=0.7, max_tokens=SYNTHETIC_GEN_TOKENS, seed=s.seed)
        flops = FlopCounter(num_params=num_params(base_dir, include_embeddings=False))
        charge_sourcing(flops, read_progress(syn.traces_dir)[0])
        traces = load_traces(syn.traces_dir, problems=hard, verifier=verifier)
        if syn.oracle_traces_dir.exists():
            traces += load_traces(syn.oracle_traces_dir, problems=hard, verifier=verifier)

        # Prefix pool: 3 cuts per trace in [0.4, 0.8] + 1 unprefixed copy (3:1).
        pool, pool_stats = build_pool(hard, traces, strategy=FixedRandomCuts(cfg=CutConfig(seed=s.seed)),
                                      cfg=PoolConfig(max_prompt_tokens=SYNTHETIC_MAX_LEN - SYNTHETIC_GEN_TOKENS,
                                                     shuffle_seed=s.seed),
                                      format_prompt=fmt, policy_tokenizer_name=tokenizer_name(tokenizer),
                                      policy_tokenizer=tokenizer)
        solved = [p for p in hard if any(t.problem_id == p.problem_id for t in traces)]

        before = evaluate(solved, generate_fn=generate, verifier=verifier, format_prompt=fmt, cfg=eval_cfg)
        before_heldout = evaluate(splits["heldout_hard"], generate_fn=generate, verifier=verifier,
                                  format_prompt=fmt, cfg=eval_cfg)

        # PrefixRL.
        t = time.perf_counter()
        policy = MegatronPolicy(PolicyConfig(model=str(base_dir), micro_batch_size=s.prompts_per_step * s.n,
                                             max_seq_len=512, optim=OptimizerSettings(lr=s.rl_lr, warmup_steps=2)))
        settings = LoopSettings(steps=s.rl_steps, prompts_per_step=s.prompts_per_step, n=s.n,
                                max_new_tokens=SYNTHETIC_GEN_TOKENS, seed=s.seed)
        log_file = (out / "metrics.jsonl").open("a")

        def log(step: int, m: dict[str, float]) -> None:
            log_file.write(json.dumps(m) + "\n")
            log_file.flush()
            logger.info("rl step %d: reward/prefixed %.3f reward/unprefixed %.3f mismatch %.5f", step,
                        m.get("reward/prefixed", float("nan")), m.get("reward/unprefixed", float("nan")),
                        m.get("mismatch/token_mult_prob_error", float("nan")))

        history = rl_loop(policy=policy, engine=engine, pool=pool, s=settings, tokenizer=tokenizer,
                          verifier=verifier, flops=flops, gate=MismatchGate(max_token_mult_prob_error=1.01), log=log)
        log_file.close()
        timings["rl"] = time.perf_counter() - t

        after = evaluate(solved, generate_fn=generate, verifier=verifier, format_prompt=fmt, cfg=eval_cfg)
        after_heldout = evaluate(splits["heldout_hard"], generate_fn=generate, verifier=verifier,
                                 format_prompt=fmt, cfg=eval_cfg)
        engine.shutdown()
    finally:
        runtime.shutdown()

    summary = {
        "hard_problems": len(hard), "solved_by_sourcing": len(solved), "pool_size": len(pool),
        "pool_prefixed_unprefixed": [pool_stats.num_prefixed, pool_stats.num_unprefixed],
        "sft_loss_first_last": [sft_losses[0], sft_losses[-1]],
        "select_pass_at_k": select.pass_at_k,
        "before": {"train_hard_solved": before.pass_at_k, "heldout_hard": before_heldout.pass_at_k},
        "after": {"train_hard_solved": after.pass_at_k, "heldout_hard": after_heldout.pass_at_k},
        "reward_prefixed_first_last": first_last(history, "reward/prefixed"),
        "reward_unprefixed_first_last": first_last(history, "reward/unprefixed"),
        "mismatch_max": max(h.get("mismatch/token_mult_prob_error", 1.0) for h in history),
        "flops": flops.to_dict(), "flops_total": flops.total(include_sourcing=True), "timings_s": timings,
        "total_s": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_plots(out / "curves.png", history)
    return summary
