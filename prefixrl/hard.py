"""Hard-problem selection (`prefixrl select-hard`; method notes 2.1): keep problems the base model never solves in k.

    selection = select_hard(problems, generate_fn=engine.generate, verifier=MathVerifier(), format_prompt=fmt,
                            cfg=SelectHardConfig())
    write_selection("hard.jsonl", selection, problems)

Zero successes in k samples does not mean the true pass rate is 0, which is why rejection sampling with a larger
budget still finds traces. The pass-rate histogram shows how much of the pool sits near zero.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefixrl.evaluation import EvalConfig, count_correct
from prefixrl.protocols import GenerateFn, Verifier
from prefixrl.records import Problem

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class SelectHardConfig:
    """pass@k filter settings."""

    sampling: EvalConfig = field(
        default_factory=lambda: EvalConfig(num_samples=512, temperature=1.0, problems_per_call=8)
    )
    """How to sample: k = sampling.num_samples per problem (paper: 512), at the sourcing temperature (ours: 1.0).
    A problem is hard when none of its k samples is correct."""
    num_bins: int = 10
    """Equal-width pass-rate bins over (0, 1] in the histogram, besides the exact-zero bin."""

    def __post_init__(self) -> None:
        if self.num_bins < 1:
            raise ValueError(f"num_bins={self.num_bins} must be >= 1")

    @property
    def k(self) -> int:
        return self.sampling.num_samples


@dataclass(slots=True)
class HardSelection:
    """The result of `select_hard`."""

    k: int
    num_correct: dict[str, int]
    """problem_id -> correct samples out of k."""
    hard_ids: list[str] = field(default_factory=list)
    """Problems with zero correct samples, in input order."""
    histogram: dict[str, int] = field(default_factory=dict)
    """Pass-rate bin label -> number of problems; `"0"` is the exact-zero bin."""
    num_sampled_tokens: int = 0


def pass_rate_histogram(num_correct: dict[str, int], *, k: int, num_bins: int) -> dict[str, int]:
    """Bins: `"0"` for no success, then `"(a, b]"` equal-width bins of the pass rate c / k over (0, 1]."""
    hist = {"0": 0} | {f"({i / num_bins:.2f}, {(i + 1) / num_bins:.2f}]": 0 for i in range(num_bins)}
    labels = list(hist)
    for c in num_correct.values():
        if c == 0:
            hist["0"] += 1
            continue
        # c / k in (0, 1] -> bin ceil(rate * num_bins) - 1, computed in integers to avoid float edge effects.
        index = -(-c * num_bins // k) - 1
        hist[labels[1 + index]] += 1
    return hist


def select_hard(
    problems: Sequence[Problem],
    *,
    generate_fn: GenerateFn,
    verifier: Verifier,
    format_prompt: Callable[[Problem], list[int]],
    cfg: SelectHardConfig,
) -> HardSelection:
    """Estimate each problem's pass@k with k samples and keep those with zero successes."""
    num_correct, num_tokens = count_correct(
        problems, generate_fn=generate_fn, verifier=verifier, format_prompt=format_prompt, cfg=cfg.sampling
    )
    selection = HardSelection(
        k=cfg.k,
        num_correct=num_correct,
        hard_ids=[p.problem_id for p in problems if num_correct[p.problem_id] == 0],
        histogram=pass_rate_histogram(num_correct, k=cfg.k, num_bins=cfg.num_bins),
        num_sampled_tokens=num_tokens,
    )
    logger.info("%d of %d problems have pass@%d = 0", len(selection.hard_ids), len(problems), cfg.k)
    return selection


def write_selection(path: str | Path, selection: HardSelection, problems: Sequence[Problem]) -> None:
    """Write the hard problems as a problem-set JSONL (`id`, `problem`, `answer`, plus `num_correct`, `k`), which
    `prefixrl.data.load_problems` reads back with the default field names."""
    hard = set(selection.hard_ids)
    with Path(path).open("w", encoding="utf-8") as f:
        for p in problems:
            if p.problem_id in hard:
                row = {
                    **p.metadata,
                    "id": p.problem_id,
                    "problem": p.prompt,
                    "answer": p.answer,
                    "k": selection.k,
                    "num_correct": selection.num_correct[p.problem_id],
                }
                f.write(json.dumps(row, ensure_ascii=True) + "\n")
