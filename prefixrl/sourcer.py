"""Stage 0: rejection-sample correct off-policy traces, resumably (`prefixrl sample`; method notes 2.2).

    summary = run_sourcer(cfg, problems, generate_fn=engine.generate, verifier=MathVerifier(),
                          format_prompt=lambda p: chat_prompt_ids(p, tokenizer=tok, cfg=ChatFormatConfig()))
    traces = load_traces(cfg.out_dir, problems=problems, verifier=MathVerifier())

For each problem of this rank (problems are dealt round-robin over `world_size` ranks), samples are drawn in rounds
of `samples_per_round` until `traces_per_problem` verified-correct traces are found (paper: 1) or `max_attempts`
samples were drawn (paper: 2500). Each round of each problem becomes one checksummed line in an append-only shard
(`prefixrl.shards`) holding the attempts and tokens it spent and any traces it found. On restart, the shards are
replayed: finished problems are skipped, unfinished ones continue with their attempt count, and a line damaged by a
kill is ignored (its round is simply redrawn), so no trace is lost or duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from prefixrl.flops import FlopCounter
from prefixrl.prefixes import derive_seed
from prefixrl.protocols import GenerateFn, Verifier
from prefixrl.records import Completion, FinishReason, OffPolicyTrace, Problem, SamplingParams
from prefixrl.shards import append_record, next_shard_path, read_records

logger = logging.getLogger(__name__)

SHARD_GLOB = "traces-r*-p*.jsonl"


@dataclass(kw_only=True, frozen=True)
class SourcerConfig:
    """Rejection-sampling settings."""

    out_dir: str
    """Directory of the append-only trace shards; rerunning with the same directory resumes."""
    model: str
    """Name of the sampling model, stored on every trace."""
    tokenizer: str
    """Name of its tokenizer, stored on every trace (cross-family traces are detected by comparing names)."""
    max_attempts: int = 2500
    """Per-problem cap on samples (paper: 2500)."""
    traces_per_problem: int = 1
    """Verified traces to keep per problem (paper: 1)."""
    samples_per_round: int = 64
    """Samples per problem per round; the last round is shortened so max_attempts is never exceeded."""
    problems_per_round: int = 32
    """Problems sampled together in one generate call."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16384
    """Generation cap per sample; truncated samples are never accepted."""
    seed: int = 0
    """Base seed; each generate call gets a seed derived from it and the problems' attempt counts."""
    keep_logprobs: bool = False
    """Store the sampled tokens' log-probs on traces (needed by the importance-weighted off-policy baseline)."""
    rank: int = 0
    """This worker's index among world_size (data-parallel rank or array-job index)."""
    world_size: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")
        for name in ("max_attempts", "traces_per_problem", "samples_per_round", "problems_per_round", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.traces_per_problem > self.max_attempts:
            raise ValueError(
                f"traces_per_problem={self.traces_per_problem} cannot exceed max_attempts={self.max_attempts}"
            )


@dataclass(slots=True)
class ProblemProgress:
    """Everything spent on and found for one problem so far (replayed from the shards)."""

    problem_id: str
    num_attempts: int = 0
    num_prompt_tokens: int = 0
    """Prompt tokens summed over all samples (each sample re-reads the prompt)."""
    num_completion_tokens: int = 0
    traces: list[OffPolicyTrace] = field(default_factory=list)
    done: bool = False

    @property
    def num_sampled_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_completion_tokens

    @property
    def solved(self) -> bool:
        return bool(self.traces)


@dataclass(slots=True)
class SourcingSummary:
    """What `run_sourcer` did on this rank."""

    progress: dict[str, ProblemProgress]
    """problem_id -> progress, for this rank's problems."""
    num_resumed_done: int = 0
    """Problems already finished by an earlier run and not resampled."""
    num_damaged_lines: int = 0
    """Damaged trailing shard lines ignored on replay."""

    @property
    def num_solved(self) -> int:
        return sum(p.solved for p in self.progress.values())

    @property
    def num_unsolved(self) -> int:
        return sum(p.done and not p.solved for p in self.progress.values())


def read_progress(out_dir: str | Path) -> tuple[dict[str, ProblemProgress], int]:
    """Replay every shard in `out_dir` (all ranks); returns problem_id -> progress and the damaged-line count."""
    progress: dict[str, ProblemProgress] = {}
    num_damaged = 0
    for path in sorted(Path(out_dir).glob(SHARD_GLOB)):
        records, damaged = read_records(path)
        num_damaged += damaged
        for record in records:
            p = progress.setdefault(record["problem_id"], ProblemProgress(record["problem_id"]))
            if p.done:
                raise ValueError(f"{path}: problem {p.problem_id} has a round after it was finished")
            p.num_attempts += record["num_attempts"]
            p.num_prompt_tokens += record["num_prompt_tokens"]
            p.num_completion_tokens += record["num_completion_tokens"]
            p.traces.extend(OffPolicyTrace.from_dict(t) for t in record["traces"])
            p.done = record["done"]
    return progress, num_damaged


def load_traces(
    out_dir: str | Path, *, problems: Sequence[Problem] | None = None, verifier: Verifier | None = None
) -> list[OffPolicyTrace]:
    """All traces in `out_dir`. With `verifier` (and `problems`), traces that no longer verify are dropped and
    counted in a warning, e.g. after a verifier change."""
    progress, _ = read_progress(out_dir)
    traces = [t for p in progress.values() for t in p.traces]
    if verifier is None:
        return traces
    if problems is None:
        raise ValueError("re-verifying traces needs their problems: pass problems=... along with verifier=...")
    by_id = {p.problem_id: p for p in problems}
    missing = sorted({t.problem_id for t in traces} - by_id.keys())
    if missing:
        raise ValueError(f"{len(missing)} traces belong to problems not passed in, e.g. {missing[:3]}")
    kept = [t for t in traces if verifier(by_id[t.problem_id], t.text)]
    if len(kept) < len(traces):
        failed = [t.trace_id for t in traces if not verifier(by_id[t.problem_id], t.text)]
        logger.warning("%d traces no longer verify and are dropped: %s", len(failed), failed[:10])
    return kept


def run_sourcer(
    cfg: SourcerConfig,
    problems: Sequence[Problem],
    *,
    generate_fn: GenerateFn,
    verifier: Verifier,
    format_prompt: Callable[[Problem], list[int]],
) -> SourcingSummary:
    """Rejection-sample this rank's problems until each is solved or hits the cap; resumes from `cfg.out_dir`."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_progress, num_damaged = read_progress(out_dir)
    mine = [p for i, p in enumerate(problems) if i % cfg.world_size == cfg.rank]
    progress = {p.problem_id: all_progress.get(p.problem_id, ProblemProgress(p.problem_id)) for p in mine}
    summary = SourcingSummary(
        progress=progress,
        num_resumed_done=sum(p.done for p in progress.values()),
        num_damaged_lines=num_damaged,
    )
    todo = [p for p in mine if not progress[p.problem_id].done]
    logger.info(
        "rank %d: %d problems, %d already finished, %d to sample",
        cfg.rank,
        len(mine),
        len(mine) - len(todo),
        len(todo),
    )
    if not todo:
        return summary
    shard = next_shard_path(out_dir, stem=f"traces-r{cfg.rank:05d}")
    with shard.open("a", encoding="utf-8") as f:
        while todo:
            active, todo = todo[: cfg.problems_per_round], todo[cfg.problems_per_round :]
            while active:
                _sample_round(
                    active,
                    cfg=cfg,
                    progress=progress,
                    generate_fn=generate_fn,
                    verifier=verifier,
                    format_prompt=format_prompt,
                    shard=f,
                )
                active = [p for p in active if not progress[p.problem_id].done]
                _log_round(cfg.rank, summary)
                refill = cfg.problems_per_round - len(active)
                active, todo = active + todo[:refill], todo[refill:]
    logger.info("rank %d: %d solved, %d unsolved at the cap", cfg.rank, summary.num_solved, summary.num_unsolved)
    return summary


def _log_round(rank: int, summary: SourcingSummary) -> None:
    """One progress line per round: a sourcing stage can run for an hour, and a killed run keeps every round it
    logged (one durable shard line per problem and round)."""
    done = sum(p.done for p in summary.progress.values())
    num_attempts = sum(p.num_attempts for p in summary.progress.values())
    logger.info("rank %d: %d of %d problems finished (%d solved, %d unsolved at the cap), %d attempts so far",
                rank, done, len(summary.progress), summary.num_solved, summary.num_unsolved, num_attempts)


def _sample_round(
    active: list[Problem],
    *,
    cfg: SourcerConfig,
    progress: dict[str, ProblemProgress],
    generate_fn: GenerateFn,
    verifier: Verifier,
    format_prompt: Callable[[Problem], list[int]],
    shard: IO[str],
) -> None:
    """One generate call per distinct sample count; one durable shard line per problem."""
    by_n: dict[int, list[Problem]] = {}
    for problem in active:
        remaining = cfg.max_attempts - progress[problem.problem_id].num_attempts
        by_n.setdefault(min(cfg.samples_per_round, remaining), []).append(problem)
    for n, group in by_n.items():
        prompts = [format_prompt(p) for p in group]
        key = ",".join(f"{p.problem_id}@{progress[p.problem_id].num_attempts}" for p in group)
        sampling = SamplingParams(
            n=n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=derive_seed(cfg.seed, key) % (2**31),
        )
        outputs = generate_fn(prompts, sampling=sampling)
        if len(outputs) != len(group) or any(len(o) != n for o in outputs):
            raise ValueError(f"generate_fn returned {[len(o) for o in outputs]} completions for {len(group)}x{n}")
        for problem, prompt_ids, completions in zip(group, prompts, outputs):
            p = progress[problem.problem_id]
            record = _round_record(problem, prompt_ids, completions, cfg=cfg, p=p, verifier=verifier)
            append_record(shard, record)


def _round_record(
    problem: Problem,
    prompt_ids: list[int],
    completions: list[Completion],
    *,
    cfg: SourcerConfig,
    p: ProblemProgress,
    verifier: Verifier,
) -> dict[str, object]:
    """Verify one problem's completions, update its progress in memory, and return the shard record."""
    new_traces: list[OffPolicyTrace] = []
    for i, c in enumerate(completions):
        if len(p.traces) + len(new_traces) >= cfg.traces_per_problem:
            break
        if c.finish_reason == FinishReason.STOP and verifier(problem, c.text):
            attempt_index = p.num_attempts + i + 1
            new_traces.append(
                OffPolicyTrace(
                    trace_id=f"{problem.problem_id}#{attempt_index}",
                    problem_id=problem.problem_id,
                    prompt_ids=list(prompt_ids),
                    trace_ids=list(c.token_ids),
                    text=c.text,
                    model=cfg.model,
                    tokenizer=cfg.tokenizer,
                    num_attempts=p.num_attempts + len(completions),
                    num_sampled_tokens=0,  # filled below, once the round's tokens are known
                    attempt_index=attempt_index,
                    logprobs=list(c.logprobs) if cfg.keep_logprobs and c.logprobs is not None else None,
                )
            )
    p.num_attempts += len(completions)
    p.num_prompt_tokens += len(prompt_ids) * len(completions)
    p.num_completion_tokens += sum(len(c.token_ids) for c in completions)
    for t in new_traces:
        t.num_sampled_tokens = p.num_sampled_tokens
    p.traces.extend(new_traces)
    p.done = len(p.traces) >= cfg.traces_per_problem or p.num_attempts >= cfg.max_attempts
    return {
        "problem_id": problem.problem_id,
        "num_attempts": len(completions),
        "num_prompt_tokens": len(prompt_ids) * len(completions),
        "num_completion_tokens": sum(len(c.token_ids) for c in completions),
        "traces": [t.to_dict() for t in new_traces],
        "done": p.done,
    }


def charge_sourcing(counter: FlopCounter, progress: dict[str, ProblemProgress]) -> None:
    """Add the sampling cost of every attempt in `progress` (e.g. `read_progress(out_dir)[0]`) to the counter's
    sourcing bucket; problems without a trace land in `sourcing_unsolved` too. Call once per run, at the start."""
    for p in progress.values():
        counter.add_sourcing(p.num_sampled_tokens, solved=p.solved)
