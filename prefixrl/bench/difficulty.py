"""Is every hard problem equally hard? A test on the sourcing log, and per-group rates.

Rejection sampling draws rounds of `samples_per_round` attempts per problem until the first right answer (or the
cap). If every problem had the same success probability p per sample, the round of each problem's first success
would follow one geometric law (censored at the last round); problems of unequal difficulty spread wider than that
(many early, and more never). `geometric_fit` fits the one law and gives the chi-square of the counts against it:

    fit = geometric_fit([1, 3, None, 2, 1, ...], max_rounds=8, samples_per_round=64)
    fit["p_value"]     # small: the problems are not equally hard; large: indistinguishable from equally hard

The paper's selection rule (keep the problems with no success in k base samples) selects the hardest problems only
when they differ; on a level where they do not, it keeps a random subset (docs/reproduction.md, session 10).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefixrl.records import Problem
from prefixrl.tasks.arith import LINE_ERRORS, first_error, worked_lines


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square with `dof` degrees of freedom: the regularized upper incomplete gamma
    Q(dof / 2, x / 2) (`torch.special.gammaincc`)."""
    import torch

    if dof < 1:
        raise ValueError(f"dof={dof} must be >= 1")
    a, z = torch.tensor(dof / 2.0, dtype=torch.float64), torch.tensor(max(x, 0.0) / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(a, z))


def first_success_rounds(attempts: Mapping[str, tuple[int, bool]], samples_per_round: int) -> dict[str, int | None]:
    """problem id -> the round (1-based) of its first right answer, or None if never; `attempts`: problem id ->
    (attempts spent, solved), from a sourcer that stops a problem at its first trace."""
    return {pid: -(-n // samples_per_round) if solved else None for pid, (n, solved) in attempts.items()}


def geometric_fit(rounds: Sequence[int | None], *, max_rounds: int, samples_per_round: int) -> dict[str, Any]:
    """Fit one success probability to every problem's first-success round (None: no success in `max_rounds`).

    Returns {"problems", "counts" (per round 1..max_rounds, then never), "expected" (the same under the fitted
    law), "q_per_round", "p_per_sample", "chi2", "dof", "p_value", "bins"}. The maximum-likelihood q of the censored
    geometric law is solved / (sum of solved rounds + max_rounds * unsolved). The chi-square merges the late rounds
    whose expected count is under 5 into the "never" bin (the usual validity rule; "bins" is how many are left);
    dof = bins - 2 (one fitted parameter; p_value nan at 0)."""
    if max_rounds < 2:
        raise ValueError(f"max_rounds={max_rounds}: the test needs at least 2 rounds (cap / samples_per_round)")
    bad = [r for r in rounds if r is not None and not 1 <= r <= max_rounds]
    if bad:
        raise ValueError(f"rounds {bad[:5]} lie outside 1..max_rounds={max_rounds}")
    n = len(rounds)
    solved = [r for r in rounds if r is not None]
    counts = [solved.count(r) for r in range(1, max_rounds + 1)] + [n - len(solved)]
    exposure = sum(solved) + max_rounds * (n - len(solved))
    q = len(solved) / exposure if exposure else 0.0
    expected = [n * q * (1 - q) ** (r - 1) for r in range(1, max_rounds + 1)] + [n * (1 - q) ** max_rounds]
    keep = max_rounds  # rounds kept as their own bins; the rest join "never"
    while keep > 1 and (expected[keep - 1] < 5 or sum(expected[keep:]) < 5):
        keep -= 1
    binned = [(c, e) for c, e in zip(counts[:keep], expected[:keep])] + [(sum(counts[keep:]), sum(expected[keep:]))]
    chi2 = sum((c - e) ** 2 / e for c, e in binned if e > 0)
    dof = len(binned) - 2  # 0 when so few problems that only one round keeps 5 expected: no test (p nan)
    return {"problems": n, "counts": counts, "expected": [round(e, 2) for e in expected], "q_per_round": q,
            "p_per_sample": 1 - (1 - q) ** (1 / samples_per_round), "chi2": chi2, "dof": dof,
            "p_value": chi2_sf(chi2, dof) if dof >= 1 else math.nan, "bins": len(binned)}  # fmt: skip


def rates_by_group(rounds: Mapping[str, int | None], groups: Mapping[str, Any], *, max_rounds: int,
                   samples_per_round: int) -> dict[str, dict[str, float]]:
    """Per group (e.g. the number of multiplying terms of each problem): problems, the fraction sourced, and the
    fitted per-sample success probability of `geometric_fit` on that group alone."""
    out: dict[str, dict[str, float]] = {}
    for g in sorted(set(groups.values())):
        rs = [r for pid, r in rounds.items() if groups[pid] == g]
        fit = geometric_fit(rs, max_rounds=max_rounds, samples_per_round=samples_per_round)
        out[str(g)] = {"problems": len(rs), "sourced": sum(r is not None for r in rs) / len(rs),
                       "p_per_sample": fit["p_per_sample"]}  # fmt: skip
    return out


def chance_floor(answer_space: int, *, k: int, cap: int) -> dict[str, float]:
    """What a guesser that writes a uniformly random answer out of `answer_space` scores on the regime figures:
    {"p_per_sample": 1 / answer_space, "pass_at_k": its pass@k, "sourced_fraction": the share of problems it solves
    within `cap` attempts}. A regime whose base is near these numbers measures luck: at 1,000 answers and a cap of
    1,024 the guesser sources 64 % of the problems (docs/reproduction.md, session 15)."""
    if answer_space < 1 or k < 1 or cap < 1:
        raise ValueError(f"need answer_space={answer_space}, k={k} and cap={cap} all >= 1")
    p = 1.0 / answer_space
    return {"p_per_sample": p, "pass_at_k": 1.0 - (1.0 - p) ** k, "sourced_fraction": 1.0 - (1.0 - p) ** cap}


class FirstErrorTally:
    """A verifier that also counts where the samples it is asked about first go wrong
    (`prefixrl.tasks.arith.first_error`): wrap the verifier of an evaluation, then read `figures()`. It tells a
    base whose errors spread along the chain from one that fails one check at one line on every problem (session 16:
    a term looked up at a fixed line, docs/reproduction.md)."""

    def __init__(self, verifier: Callable[[Problem, str], bool], kinds: Any = None) -> None:
        self.verifier = verifier
        self.kinds = kinds
        """With a `SlipKinds` (a teacher that slips on some kinds of line only): also tally `kind_hazards`."""
        self.by_kind: Counter[tuple[bool, bool]] = Counter()
        """(the line's kind is in `kinds`, the line is right) -> lines, over the lines that `kind_hazards` judges."""
        self.errors: Counter[tuple[str, int]] = Counter()
        """First errors of the wrong samples."""
        self.fails_at: Counter[int | None] = Counter()
        """Every sample, right or wrong: the worked line where its chain first fails (None: it never does)."""

    def __call__(self, problem: Problem, text: str) -> bool:
        ok = self.verifier(problem, text)
        err = first_error(problem, text)
        if not ok:
            self.errors[err or ("none", -1)] += 1  # none: a sound chain the verifier refused
        self.fails_at[err[1] if err and err[0] in LINE_ERRORS else None] += 1
        if self.kinds is not None:
            self.by_kind.update(kind_hazards(problem, text, self.kinds))
        return ok

    def line_failure(self) -> list[list[int | float]]:
        """[[line, chains reaching it, share of them that first fail there], ...] for every worked line some chain
        reached: the per-line hazard. First errors pile up on line 0 whatever the base, since every chain meets it;
        this rate is flat along the chain when the errors are spread evenly. A chain counts as reaching a line when
        no earlier line failed (right answers from unsound chains included; errors after the last line do not count
        as a line's; a chain cut before its answer line fails at its last line, as `first_error` says)."""
        last = max((i for i in self.fails_at if i is not None), default=-1)
        out, reaching = [], sum(self.fails_at.values())
        for line in range(last + 1):
            failed = self.fails_at[line]
            out.append([line, reaching, failed / reaching if reaching else 0.0])
            reaching -= failed
        return out

    def figures(self, top: int = 6) -> dict[str, Any]:
        """{"wrong_samples": n, "by_kind": {kind: share}, "top": [[kind, line, share], ...] (the `top` most
        common first errors), "line_failure": `line_failure()`}; shares of the wrong samples it was asked about (an
        evaluation does not ask about completions cut at the generation cap: they count as wrong without a
        verdict)."""
        n = sum(self.errors.values())
        kinds: Counter[str] = Counter()
        for (kind, _), c in self.errors.items():
            kinds[kind] += c
        out = {"wrong_samples": n, "by_kind": {k: c / n for k, c in kinds.most_common()},
               "line_failure": self.line_failure(),
               "top": [[k, line, c / n] for (k, line), c in self.errors.most_common(top)]}
        if self.kinds is not None:  # [right, judged] per side of the teacher's kinds
            out["line_right_by_slip_kind"] = {
                name: [self.by_kind[(flag, True)], self.by_kind[(flag, True)] + self.by_kind[(flag, False)]]
                for name, flag in (("slip_kinds", True), ("other_kinds", False))}
        return out


def kind_hazards(problem: Problem, text: str, kinds: Any) -> list[tuple[bool, bool]]:
    """(the line's kind -- its label and the prompt's term -- is in `kinds`, the line is right) for each worked line
    of `text` up to and including the first that is not right (`worked_lines` kind "."): every judged line starts
    from a right total, so the right share per side is the base's per-line accuracy on the kinds its teacher slips
    on and on the others. A base that learned its teacher's kinds is right far more often on the others."""
    out = []
    for label, term, kind in worked_lines(problem, text):
        out.append(((label, term) in kinds, kind == "."))
        if kind != ".":
            break
    return out
