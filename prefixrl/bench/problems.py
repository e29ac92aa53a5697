"""The benchmark's problems: the task configuration a RegimeSettings implies, problems of one level, the base's SFT
corpus and its teacher's chains, the splits (train_hard, heldout_hard, heldout_medium), and the paper's rule for hard
problems (`hard_filter`: keep the problems the base never solves in k samples). No model here: the one sampling step,
`hard_filter`'s `check`, is passed in by `prefixrl.bench.regime`, which runs the stages."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefixrl.records import Problem

if TYPE_CHECKING:
    from prefixrl.bench.regime import RegimeSettings


def task_config(s: RegimeSettings, *, hard: int, medium: int, seed: int) -> Any:
    from prefixrl.tasks.arith import ArithConfig

    return ArithConfig(terms={"easy": 2, "medium": medium, "hard": hard}, max_operand=s.max_operand,
                       first_term_max=s.first_term_max, max_answer=s.max_answer, width=s.width, labels=s.labels,
                       random_label_start=s.random_label_start, seed=seed, multiply_prob=s.multiply_prob,
                       multipliers=s.multipliers,
                       sizes={"heldout_hard": s.heldout_hard, "heldout_medium": s.heldout_medium,
                              "train_hard": s.train_hard})  # fmt: skip


def level_problems(s: RegimeSettings, *, level: int, count: int, tag: str, seed: int) -> list[Problem]:
    """`count` distinct problems with `level` terms (ids `<tag>-L<level>-<i>`)."""
    from prefixrl.prefixes import derive_seed
    from prefixrl.tasks.arith import make_problem

    cfg = task_config(s, hard=level, medium=level, seed=seed)
    rng = random.Random(derive_seed(seed, f"{tag}-{level}"))
    out: dict[str, Problem] = {}
    for _ in range(100 * count):
        if len(out) == count:
            break
        p = make_problem(rng, num_terms=level, cfg=cfg, problem_id=f"{tag}-L{level}-{len(out):05d}", level=f"L{level}")
        out.setdefault(p.prompt, p)
    if len(out) < count:
        raise ValueError(f"only {len(out)} distinct {level}-term problems exist under max_operand={s.max_operand}, "
                         f"max_answer={s.max_answer}; lower the count ({count}) or widen the ranges")
    return list(out.values())


def check_gen_tokens(name: str, gen_tokens: int, s: RegimeSettings, *, level: int, tokenizer: Any) -> None:
    """ValueError when `gen_tokens` (the setting called `name`) cannot hold a worked `level`-term solution (the
    longest left-to-right chain of 32 fresh problems, plus end of sequence): every sample would be cut before its
    answer line and score 0, which looks like a hard level rather than a wrong setting."""
    from prefixrl.tasks.arith import solutions

    cfg = task_config(s, hard=level, medium=level, seed=s.seed)
    needed = 1 + max(len(tokenizer.encode(solutions(p, num=1, cfg=cfg)[0]))
                     for p in level_problems(s, level=level, count=32, tag="length", seed=s.seed + 7))  # fmt: skip
    if gen_tokens < needed:
        raise ValueError(f"{name}={gen_tokens} cannot hold a worked {level}-term solution ({needed} tokens): every "
                         f"sample would be cut before its answer; set {name} >= {needed}")


def base_corpus(s: RegimeSettings) -> list[Problem]:
    """The base model's SFT problems: `per_level` of every level."""
    return [p for lv in s.levels for p in level_problems(s, level=lv, count=s.per_level, tag="sft", seed=s.seed)]


def base_examples(s: RegimeSettings) -> list[tuple[Problem, str]]:
    """(problem, worked chain) pairs the base model is trained on: `orders_per_problem` orders of every problem of
    `base_corpus`, with the teacher's slips at slip_rate (at 0 these are exactly `solutions`)."""
    from prefixrl.tasks.arith import slipped_solutions

    cfg, kinds = task_config(s, hard=max(s.levels), medium=max(s.levels), seed=s.seed), slip_kinds(s)
    return [(p, t) for p in base_corpus(s)
            for t in slipped_solutions(p, num=s.orders_per_problem, cfg=cfg, slip_rate=s.slip_rate, kinds=kinds)]


def slip_kinds(s: RegimeSettings) -> Any:
    """The kinds of line the base's teacher slips on (`prefixrl.tasks.arith.SlipKinds`), or None for every line."""
    from prefixrl.tasks.arith import SlipKinds

    return SlipKinds(s.slip_kind_fraction, seed=s.seed) if s.slip_kind_fraction < 1.0 else None


def slip_line_count(kinds: Any, problem: Problem) -> int:
    """How many of `problem`'s worked lines (left to right) are of a kind in `kinds` (a `SlipKinds`)."""
    from prefixrl.tasks.arith import term_labels

    labels = term_labels(problem) or [None] * (len(problem.metadata["terms"]) - 1)
    return sum((lb, t) in kinds for lb, t in zip(labels, problem.metadata["terms"][1:]))


def slip_lines(s: RegimeSettings, problems: list[Problem]) -> dict[str, float] | None:
    """How many of each problem's worked lines are of a kind the teacher slips on (mean, min, max over `problems`),
    and the share of all kinds in the set; None when the teacher slips on every kind."""
    from prefixrl.tasks.arith import LABELS

    kinds = slip_kinds(s)
    if kinds is None or not problems:
        return None
    counts = [slip_line_count(kinds, p) for p in problems]
    steps = [*range(1, s.max_operand + 1), *range(-s.max_operand, 0),
             *(f"*{m}" for m in s.multipliers if s.multiply_prob > 0)]
    labels = list(LABELS[: max(s.levels) - 1]) if s.labels else [None]
    return {"mean": sum(counts) / len(counts), "min": min(counts), "max": max(counts),
            "kind_share": kinds.share(labels=labels, terms=steps)}


def teacher_accuracy(s: RegimeSettings, *, count: int = 500) -> dict[str, float]:
    """Level (as a string) -> pass@1 of the base's SFT teacher (`slipped_chain` at slip_rate, left-to-right chains)
    on `count` fresh problems of that level: the base's ceiling, approached from below by a base that trains long
    enough (it slips more than its teacher). A base far below it at the hard level is still learning, so more base
    training (the more_base control) can beat every RL method there (session 20: 0.2 % of a 33 % teacher)."""
    from prefixrl.tasks.arith import ArithVerifier, slipped_solutions

    verifier, kinds = ArithVerifier(), slip_kinds(s)
    out = {}
    for level in s.levels:
        cfg = task_config(s, hard=level, medium=level, seed=s.seed + 11)
        problems = level_problems(s, level=level, count=count, tag="teacher", seed=s.seed + 11)
        right = [verifier(p, text) for p in problems
                 for text in slipped_solutions(p, num=1, cfg=cfg, slip_rate=s.slip_rate, kinds=kinds)]  # fmt: skip
        out[str(level)] = sum(right) / len(right)
    return out


def make_bench_splits(s: RegimeSettings, *, hard: int, medium: int, exclude: set[str]) -> dict[str, list[Problem]]:
    """train_hard / heldout_hard / heldout_medium at the chosen levels, without any prompt in `exclude`."""
    from prefixrl.tasks.arith import make_splits

    out: dict[str, list[Problem]] = {}
    for extra in (0, 64, 512):
        cfg = task_config(s, hard=hard, medium=medium, seed=s.seed + 1)
        cfg = replace(cfg, sizes={k: v + extra for k, v in cfg.sizes.items()})
        splits = make_splits(cfg)
        want = {"train_hard": s.train_hard, "heldout_hard": s.heldout_hard, "heldout_medium": s.heldout_medium}
        out = {k: [p for p in splits[k] if p.prompt not in exclude][:n] for k, n in want.items()}
        if all(len(out[k]) == n for k, n in want.items()):
            return out
    raise ValueError(f"could not draw splits disjoint from the base corpus at levels hard={hard}, medium={medium}; "
                     "lower per_level or raise max_operand")


HARD_SPLITS = ("train_hard", "heldout_hard")
"""The splits `hard_filter` selects (heldout_medium is drawn as is)."""
HARD_FILTER_POOL = 3
"""The default of `RegimeSettings.hard_filter_pool`: candidates drawn per wanted hard problem."""
_FILTER_CHUNK = 32


def hard_filter(path: Path, s: RegimeSettings, candidates: dict[str, list[Problem]],
                check: Callable[[list[Problem]], list[tuple[bool, int]]]) -> tuple[dict[str, list[Problem]],
                                                                                    dict[str, Any]]:
    """The paper's hard-problem rule: of each split's `candidates` (split name -> problems, in order), the first
    train_hard / heldout_hard problems whose hard_filter_k samples are all wrong. `check(problems)` samples each
    problem hard_filter_k times -> (any right, tokens sampled: prompt + completion) per problem; it runs a chunk at a
    time until enough problems are kept, and every result is saved to `path` first (a resumed run samples no
    problem twice). Returns (the kept splits, figures: k, per split checked / kept / kept_fraction, samples,
    tokens, wall_s: the seconds spent sampling, summed over resumed runs). ValueError when the candidates run out,
    with the numbers and the fix."""
    state = json.loads(path.read_text()) if path.exists() else {"solved": {}, "samples": 0, "tokens": 0}
    want = {"train_hard": s.train_hard, "heldout_hard": s.heldout_hard}
    kept: dict[str, list[Problem]] = {}
    figures: dict[str, Any] = {"k": s.hard_filter_k}
    for name, ps in candidates.items():
        survivors: list[Problem] = []
        end = 0
        while end < len(ps) and len(survivors) < want[name]:
            chunk, end = ps[end:end + _FILTER_CHUNK], min(len(ps), end + _FILTER_CHUNK)
            todo = [p for p in chunk if p.problem_id not in state["solved"]]
            if todo:
                t0 = time.perf_counter()
                for p, (solved, tokens) in zip(todo, check(todo), strict=True):
                    state["solved"][p.problem_id] = solved
                    state["samples"] += s.hard_filter_k
                    state["tokens"] += tokens
                state["wall_s"] = state.get("wall_s", 0.0) + time.perf_counter() - t0
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state))
                tmp.replace(path)
            survivors += [p for p in chunk if not state["solved"][p.problem_id]]
        kept[name] = survivors[: want[name]]
        if len(kept[name]) < want[name]:
            raise ValueError(f"regime.hard_filter_k={s.hard_filter_k}: only {len(kept[name])} of {len(ps)} {name} "
                             f"candidates fail all {s.hard_filter_k} samples, {want[name]} wanted; lower "
                             "hard_filter_k, raise hard_filter_pool or make the hard level harder (lower "
                             "target_pass_at_k or temperature)")
        figures[name] = {"checked": end, "kept": len(kept[name]), "kept_fraction": len(survivors) / max(1, end)}
    return kept, figures | {"samples": state["samples"], "tokens": state["tokens"], "wall_s": state.get("wall_s")}
