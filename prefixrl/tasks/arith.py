"""Synthetic task for the CPU default: add and subtract a chain of numbers, with a worked solution.

    cfg = ArithConfig(seed=0)
    splits = make_splits(cfg)                    # {"train_easy": [Problem, ...], ..., "heldout_hard": [...]}
    texts = solutions(splits["train_easy"][0], num=3, cfg=cfg)    # several valid worked chains, canonical first
    ArithVerifier()(problem, "12 + 30 = 42\nANSWER: 42")        # True iff the final answer is right

A problem is `Compute 37 + 58 - 12 + 9.`; its answer is an integer in [0, max_answer] (1,000 possible answers by
default). A worked solution adds one term per line, in any order whose running totals stay in [0, max_answer]:

    58 - 12 = 46
    46 + 37 = 83
    83 + 9 = 92
    ANSWER: 92

so a problem with k terms has up to (k - 1)! * (number of positive terms) correct chains, and the verifier looks only
at the final answer. The difficulty knob is the number of terms (`ArithConfig.terms`): every extra line is one more
chance for a small model to slip, so hard problems are rarely solved end to end, while a correct trace's prefix (its
first partial sums) makes the rest easy -- the situation PrefixRL is built for. With `ArithConfig.multiply_prob`
some terms multiply the running total instead (`Compute 437 a + 5 b * 3.`, totals modulo max_answer + 1, applied
left to right: `442 b * 3 = 326`), so the answer is no longer the sum of the prompt's numbers. Everything is
deterministic from `ArithConfig.seed`; the splits are disjoint by prompt text.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefixrl.prefixes import derive_seed
from prefixrl.records import Problem

ANSWER_RE = re.compile(r"ANSWER:\s*(-?\d+)")
"""The final-answer line; the first match is the model's answer (later ones are ignored, so hedging does not pay)."""

SPLITS = ("heldout_hard", "heldout_medium", "train_hard", "train_medium", "train_easy")
"""Split names, in generation order: held-out sets are drawn first, so their problems do not depend on train sizes."""

_MAX_TRIES_PER_PROBLEM = 10_000

LABELS = "abcdefghijklmnopqrstuvwxyz"
"""Term labels (`ArithConfig.labels`): the i-th term after the first is LABELS[i - 1], or LABELS[(start + i - 1) % 26]
with `ArithConfig.random_label_start`."""


@dataclass(kw_only=True, frozen=True)
class ArithConfig:
    """Sizes, difficulty levels and seed of the synthetic task."""

    terms: dict[str, int] = field(default_factory=lambda: {"easy": 3, "medium": 5, "hard": 8})
    """Difficulty level -> number of terms per problem."""
    sizes: dict[str, int] = field(
        default_factory=lambda: {
            "train_easy": 2000, "train_medium": 500, "train_hard": 500, "heldout_medium": 100, "heldout_hard": 100,
        }
    )  # fmt: skip
    """Split -> number of problems; a split's level is the part of its name after the underscore."""
    max_operand: int = 99
    """Terms are drawn uniformly from [1, max_operand]."""
    first_term_max: int | None = None
    """The first term is drawn from [1, first_term_max] (None: max_operand). A large first term with small steps
    (e.g. 999 and 9) keeps 1,000 possible answers while each line is a one-digit update a tiny model learns fast."""
    max_answer: int = 999
    """Answers and every partial sum of the canonical chain lie in [0, max_answer]."""
    width: int = 0
    """The prompt's first term, every running total and the answer are written zero-padded to this many digits
    (0: unpadded). Fixed-width numbers put every digit at a fixed offset from the digits it depends on: with width 3
    the 4-layer base learns the one-digit updates several times faster (docs/reproduction.md)."""
    labels: bool = False
    """Every term after the first carries a letter label (`Compute 090 a + 5 b - 3.`) that the worked line repeats
    (`090 a + 5 = 095`), and solution orders keep the first term first. The label turns "which term comes next" into
    an exact-match lookup in the prompt: without labels the 4-layer base wrote `+` on nearly every line and often the
    wrong term; with them it had signs and terms right on most lines by step 800 (docs/reproduction.md). Needs at
    most 27 terms."""
    random_label_start: bool = False
    """With labels: each problem's labels start at a random letter and run on cyclically (`Compute 090 x + 5 y - 3
    z + 1 a + 4.`), so every letter labels early and late terms alike. With labels always starting at `a`, base (f)
    copied the terms of `a`-`e` and `g` without fault and those of `f` and `h`-`m` (the letters only long problems
    reach) at chance (docs/reproduction.md). Changes the problems drawn, not only their labels."""
    subtract_prob: float = 0.35
    """Probability that a term after the first is subtracted."""
    multiply_prob: float = 0.0
    """Probability that a term after the first multiplies the running total instead (`b * 3`, written "*3" in
    metadata["terms"]; the factor drawn from `multipliers`). With any (multiply_prob > 0), every total is taken
    modulo max_answer + 1 and the chain is applied left to right: the answer is then an affine map of the first term
    that depends on where each step sits, not the sum of the prompt's numbers, so a model cannot reach it without
    working the chain, and a problem's difficulty depends on its own multiplications. 0 (the default) draws exactly
    the problems of earlier versions."""
    multipliers: tuple[int, ...] = (2, 3)
    """Factors of the multiplying terms (each >= 2)."""
    seed: int = 0
    """Everything (problems, splits, solution orders) is a function of this seed."""

    def __post_init__(self) -> None:
        if any(k < 2 for k in self.terms.values()):
            raise ValueError(f"terms={self.terms}: every level needs at least 2 terms")
        unknown = [s for s in self.sizes if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown} in sizes; use names from {SPLITS}")
        missing = sorted({s.split("_", 1)[1] for s in self.sizes} - set(self.terms))
        if missing:
            raise ValueError(f"sizes uses level(s) {missing} that terms={self.terms} does not define; add them")
        if not (1 <= self.max_operand <= self.max_answer):
            raise ValueError(f"need 1 <= max_operand={self.max_operand} <= max_answer={self.max_answer}")
        if self.first_term_max is not None and not (1 <= self.first_term_max <= self.max_answer):
            raise ValueError(f"need 1 <= first_term_max={self.first_term_max} <= max_answer={self.max_answer}")
        if self.width and 10**self.width <= self.max_answer:
            raise ValueError(f"width={self.width} cannot hold max_answer={self.max_answer}; use width >= "
                             f"{len(str(self.max_answer))} or 0 (unpadded)")
        if self.labels and max(self.terms.values()) > len(LABELS) + 1:
            raise ValueError(f"labels=True names at most {len(LABELS) + 1} terms; terms={self.terms} has more")
        if not 0.0 <= self.subtract_prob < 1.0:
            raise ValueError(f"subtract_prob={self.subtract_prob} must be in [0, 1)")
        if not 0.0 <= self.multiply_prob < 1.0:
            raise ValueError(f"multiply_prob={self.multiply_prob} must be in [0, 1)")
        if self.multiply_prob > 0 and (not self.multipliers or min(self.multipliers) < 2 or max(self.multipliers) > 9):
            raise ValueError(f"multipliers={self.multipliers} must be one-digit factors in [2, 9] (a worked line "
                             "writes `* m`); e.g. (2, 3)")

    @property
    def modulus(self) -> int:
        """Totals are taken modulo this (max_answer + 1) when the chains multiply; 0: plain sums kept in range."""
        return self.max_answer + 1 if self.multiply_prob > 0 else 0


# ------------------------------------------------------------------------------------------------ problems
Term = int | str
"""A term: a signed int (add it) or "*m" (multiply the running total by m; never the first term)."""


def _signed_terms(problem: Problem) -> list[Term]:
    return [t if isinstance(t, str) else int(t) for t in problem.metadata["terms"]]


def _modulus(problem: Problem) -> int:
    return int(problem.metadata.get("modulus", 0))


def apply_term(total: int, term: Term, modulus: int = 0) -> int:
    """The running total after `term` (modulo `modulus` when it is > 0)."""
    total = total * int(term[1:]) if isinstance(term, str) else total + term
    return total % modulus if modulus else total


def chain_value(terms: Sequence[Term], modulus: int = 0) -> int:
    """The answer: `terms` applied left to right to the first one."""
    total = int(terms[0])
    for t in terms[1:]:
        total = apply_term(total, t, modulus)
    return total


def _step(t: Term, label: str | None) -> str:
    op = f"* {t[1:]}" if isinstance(t, str) else f"{'-' if t < 0 else '+'} {abs(t)}"
    return f"{label + ' ' if label else ''}{op}"


def prompt_text(terms: Sequence[Term], *, width: int = 0, labels: bool | str = False) -> str:
    """`Compute 37 + 58 - 12.` for signed terms [37, 58, -12] (the first term is positive; zero-padded to `width`
    digits when width > 0; `Compute 37 a + 58 b - 12.` with labels=True, or the given letters, one per later term)."""
    names = LABELS if labels is True else labels
    steps = [_step(t, names[i] if names else None) for i, t in enumerate(terms[1:])]
    return f"Compute {' '.join([f'{terms[0]:0{width}d}', *steps])}."


def _running_ok(terms: Sequence[Term], max_answer: int, modulus: int = 0) -> bool:
    if modulus:
        return True
    total = 0
    for t in terms:
        total = apply_term(total, t)
        if not 0 <= total <= max_answer:
            return False
    return True


def _draw_term(rng: random.Random, cfg: ArithConfig) -> Term:
    if cfg.multiply_prob and rng.random() < cfg.multiply_prob:
        return f"*{rng.choice(cfg.multipliers)}"
    return rng.randint(1, cfg.max_operand) * (-1 if rng.random() < cfg.subtract_prob else 1)


def make_problem(rng: random.Random, *, num_terms: int, cfg: ArithConfig, problem_id: str, level: str) -> Problem:
    """One problem with `num_terms` terms whose left-to-right partial sums stay in [0, cfg.max_answer] (or are taken
    modulo cfg.modulus when the chains multiply)."""
    for _ in range(_MAX_TRIES_PER_PROBLEM):
        terms: list[Term] = [rng.randint(1, cfg.first_term_max or cfg.max_operand)]
        terms += [_draw_term(rng, cfg) for _ in range(num_terms - 1)]
        if _running_ok(terms, cfg.max_answer, cfg.modulus):
            start = rng.randrange(len(LABELS)) if cfg.labels and cfg.random_label_start else 0
            names = (LABELS * 2)[start : start + num_terms - 1] if cfg.labels else ""
            return Problem(
                problem_id=problem_id, prompt=prompt_text(terms, width=cfg.width, labels=names),
                answer=str(chain_value(terms, cfg.modulus)), source="arith",
                metadata={"terms": terms, "level": level, "num_terms": num_terms,
                          **({"modulus": cfg.modulus} if cfg.modulus else {})},
            )  # fmt: skip
    raise ValueError(
        f"could not draw a {num_terms}-term problem within max_answer={cfg.max_answer} in {_MAX_TRIES_PER_PROBLEM} "
        "tries; raise max_answer or lower max_operand / the number of terms"
    )


def make_splits(cfg: ArithConfig) -> dict[str, list[Problem]]:
    """All splits of `cfg.sizes`, disjoint by prompt; ids are `arith-<split>-<index>`."""
    seen: set[str] = set()
    out: dict[str, list[Problem]] = {}
    for split in (s for s in SPLITS if s in cfg.sizes):
        level = split.split("_", 1)[1]
        rng = random.Random(derive_seed(cfg.seed, split))
        problems: list[Problem] = []
        tries = 0
        while len(problems) < cfg.sizes[split]:
            tries += 1
            if tries > _MAX_TRIES_PER_PROBLEM * max(1, cfg.sizes[split]):
                raise ValueError(f"split {split}: only {len(problems)} distinct problems found; lower sizes[{split!r}]")
            p = make_problem(rng, num_terms=cfg.terms[level], cfg=cfg, level=level,
                             problem_id=f"arith-{split}-{len(problems):05d}")  # fmt: skip
            if p.prompt not in seen:
                seen.add(p.prompt)
                problems.append(p)
        out[split] = problems
    return out


def write_problems(path: str | Path, problems: Sequence[Problem]) -> None:
    """JSONL readable by `prefixrl.data.load_problems` with its default fields (id, problem, answer)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w") as f:
        for prob in problems:
            f.write(json.dumps({"id": prob.problem_id, "problem": prob.prompt, "answer": prob.answer,
                                **prob.metadata}) + "\n")  # fmt: skip


# ------------------------------------------------------------------------------------------------ solutions
def _format_chain(terms: Sequence[Term], totals: Sequence[int], *, width: int, labels: Sequence[str] | None) -> str:
    lines = [f"{a:0{width}d} {_step(t, labels[i] if labels else None)} = {b:0{width}d}"
             for i, (a, t, b) in enumerate(zip([terms[0], *totals], terms[1:], totals))]  # fmt: skip
    return "\n".join([*lines, f"ANSWER: {totals[-1] if totals else terms[0]:0{width}d}"])


def chain_text(terms: Sequence[Term], *, width: int = 0, labels: Sequence[str] | None = None,
               modulus: int = 0) -> str:
    """The worked chain applying `terms` in the given order, ending with the answer line; running totals and the
    answer are zero-padded to `width` digits when width > 0 (and taken modulo `modulus` when it is > 0);
    `labels[i]` names the term applied on line i."""
    totals = [chain_value(terms[: i + 2], modulus) for i in range(len(terms) - 1)]
    return _format_chain(terms, totals, width=width, labels=labels)


@dataclass(frozen=True, slots=True)
class SlipKinds:
    """The kinds of worked line a careless teacher slips on (`slipped_chain`). A line's kind is its term's label and
    step: ("c", 7) for `c + 7`, ("d", -4) for `d - 4`, ("e", "*3") for `e * 3` (label None when unlabelled); a
    seeded `fraction` of all kinds is in the set, each kind in or out for good. With fraction 1 the teacher may
    slip on every line alike, a single behaviour that RL on any one problem unlearns for all of them (session 21,
    docs/reproduction.md); below 1 its errors are problem-specific: a problem is as hard as its own lines' kinds,
    and a right answer on it says nothing of the kinds it lacks.

        SlipKinds(0.5, seed=0)  # about half the kinds; ("c", 7) in kinds tells whether `c + 7` lines may slip
    """

    fraction: float
    """Share of the kinds in the set, in (0, 1]."""
    seed: int = 0
    """Which kinds: every kind is kept or not by a hash of (seed, kind)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction={self.fraction} must be in (0, 1]; 1 slips on every kind of line")

    def __contains__(self, kind: tuple[str | None, Term]) -> bool:
        label, term = kind
        return self.fraction >= 1.0 or derive_seed(self.seed, f"slip-kind:{label}:{term}") % 1_000_000 < round(
            self.fraction * 1_000_000)

    def share(self, *, labels: Sequence[str | None], terms: Sequence[Term]) -> float:
        """The share of the kinds (every label with every term) that are in the set."""
        kinds = [(lb, t) for lb in labels for t in terms]
        return sum(k in self for k in kinds) / len(kinds)


def slipped_chain(terms: Sequence[Term], *, rng: random.Random, slip_rate: float, max_answer: int, width: int = 0,
                  labels: Sequence[str] | None = None, modulus: int = 0, kinds: SlipKinds | None = None) -> str:
    """`chain_text` written by a careless teacher: each line's total is, with probability `slip_rate`, a uniformly
    random wrong number, and the later lines carry on from it (each of them right given the written total), so the
    answer line is wrong. The random total is drawn where the rest of the chain stays in [0, max_answer], so one of
    the teacher's slipped chains lands on the right answer about 1 time in max_answer: its right answers are sound
    chains. A base trained on them keeps slipping however long it trains, but more often than its teacher, and its
    right answers need not be sound (base (g): 24 % of its sourced traces were; docs/reproduction.md). With
    `modulus` (chains that multiply) a slip is any other number in [0, modulus). With `kinds`, only lines of those
    kinds (`SlipKinds`: the term's label and step) may slip; the others are always right (None: every line may)."""
    if not 0.0 <= slip_rate < 1.0:
        raise ValueError(f"slip_rate={slip_rate} must be in [0, 1)")
    totals, total = [], int(terms[0])
    for i, t in enumerate(terms[1:], start=1):
        total = apply_term(total, t, modulus)
        slips = rng.random() < slip_rate and (kinds is None or (labels[i - 1] if labels else None, t) in kinds)
        if slips and modulus:  # any other total: later lines are taken modulo too, so every total is possible
            wrong = rng.randrange(modulus - 1)
            total = wrong + (wrong >= total)
        elif slips:
            rest = [sum(terms[i + 1 : j + 1]) for j in range(i, len(terms))]  # partial sums after this line (0 first)
            low, high = -min(rest), max_answer - max(rest)
            if high > low:  # the right total lies in [low, high]; pick another one
                wrong = rng.randint(low, high - 1)
                total = wrong + (wrong >= total)
        totals.append(total)
    return _format_chain(terms, totals, width=width, labels=labels)


def term_labels(problem: Problem) -> str:
    """The letters labelling the terms after the first in `problem`'s prompt, in prompt order ("" if unlabelled)."""
    return "".join(_PROMPT_LABEL_RE.findall(problem.prompt))


def _orders(problem: Problem, *, num: int, cfg: ArithConfig) -> list[tuple[int, ...]]:
    """Up to `num` distinct valid orders of the term indices: left to right first, then random ones (with
    multiplying terms, only the orders that reach the same answer, i.e. mostly swaps of additions between two
    multiplications)."""
    terms = _signed_terms(problem)
    rng = random.Random(derive_seed(cfg.seed, problem.problem_id))
    orders: list[tuple[int, ...]] = [tuple(range(len(terms)))]  # term indices; labelled orders keep the first first
    seen = {tuple(terms)}  # signed orders: orders that only swap equal terms are drawn once
    for _ in range(20 * num):
        if len(orders) >= num:
            break
        perm = ((0, *rng.sample(range(1, len(terms)), len(terms) - 1)) if cfg.labels
                else tuple(rng.sample(range(len(terms)), len(terms))))  # fmt: skip
        signed = tuple(terms[i] for i in perm)
        if (isinstance(signed[0], int) and signed[0] > 0 and signed not in seen
                and _running_ok(signed, cfg.max_answer, cfg.modulus)
                and chain_value(signed, cfg.modulus) == chain_value(terms, cfg.modulus)):  # fmt: skip
            orders.append(perm)
            seen.add(signed)
    return orders


def solutions(problem: Problem, *, num: int, cfg: ArithConfig) -> list[str]:
    """Up to `num` distinct correct worked chains: the left-to-right order first, then random valid orders."""
    terms, names = _signed_terms(problem), term_labels(problem)
    return [chain_text([terms[i] for i in o], width=cfg.width, labels=[names[i - 1] for i in o[1:]] if names else None,
                       modulus=cfg.modulus)
            for o in _orders(problem, num=num, cfg=cfg)]  # fmt: skip


def slipped_solutions(problem: Problem, *, num: int, cfg: ArithConfig, slip_rate: float,
                      kinds: SlipKinds | None = None) -> list[str]:
    """`solutions` (the same orders) written by `slipped_chain`'s careless teacher, slipping only on lines of `kinds`
    when given; the slips are a function of cfg.seed and the problem id."""
    terms, names = _signed_terms(problem), term_labels(problem)
    rng = random.Random(derive_seed(cfg.seed, f"slips-{problem.problem_id}"))
    return [slipped_chain([terms[i] for i in o], rng=rng, slip_rate=slip_rate, max_answer=cfg.max_answer,
                          width=cfg.width, labels=[names[i - 1] for i in o[1:]] if names else None,
                          modulus=cfg.modulus, kinds=kinds)
            for o in _orders(problem, num=num, cfg=cfg)]  # fmt: skip


def sft_examples(problems: Sequence[Problem], *, per_problem: int, cfg: ArithConfig) -> list[tuple[Problem, str]]:
    """(problem, worked solution) pairs for SFT of the tiny base model, `per_problem` orders each (fewer when a
    problem has fewer valid orders)."""
    return [(p, text) for p in problems for text in solutions(p, num=per_problem, cfg=cfg)]


def tokenizer_corpus(splits: dict[str, list[Problem]], *, cfg: ArithConfig) -> list[str]:
    """Every prompt and two worked solutions per problem: the text a task tokenizer is trained on."""
    return [p.prompt for ps in splits.values() for p in ps] + [
        text for ps in splits.values() for p in ps for text in solutions(p, num=2, cfg=cfg)
    ]


def answer_of(text: str) -> int | None:
    """The first `ANSWER: <int>` in `text`, or None."""
    m = ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


_LINE_RE = re.compile(r"^(-?\d+) (?:([a-z]) )?([+*-]) (\d+) = (-?\d+)$")


def _parse_line(line: str) -> tuple[int, str | None, Term, int] | None:
    """`043 a + 5 = 048` -> (43, "a", 5, 48) (label None when unlabelled; the step signed, or "*m" for `* m`); None
    if not such a line."""
    m = _LINE_RE.match(line.strip())
    if m is None:
        return None
    d, op = int(m.group(4)), m.group(3)
    return int(m.group(1)), m.group(2), f"*{d}" if op == "*" else d if op == "+" else -d, int(m.group(5))


_PROMPT_LABEL_RE = re.compile(r" ([a-z]) [+*-] \d")


def chain_is_sound(problem: Problem, text: str) -> bool:
    """True iff `text` is a worked chain that really computes the answer: every line `a +/- d = b` (or `a * m = b`)
    is right, each line starts from the previous total (the first from one of the terms), every term is used exactly
    once (by its label when the problem has labels), the last total is the problem's value and the answer line
    repeats it. Not the reward (the verifier reads only the answer): a diagnostic that tells a sound solution from a
    chain whose wrong steps happen to land on the right number."""
    return first_error(problem, text) is None


FIRST_ERRORS = ("format", "copy", "sign", "lookup", "arith", "short", "order", "answer")
"""`first_error`'s kinds, in the order a chain is checked."""
LINE_ERRORS = ("format", "copy", "sign", "lookup", "arith")
"""The kinds that are a worked line's own failure (the rest are found after the last line)."""


def first_error(problem: Problem, text: str) -> tuple[str, int] | None:
    """Where and how a worked chain first goes wrong: (kind, worked-line index), or None for a sound chain
    (`chain_is_sound`). Kinds: "format" (a line that is not a worked line, or no answer line at the end), "copy"
    (the left side is not the previous total; the first line's not one of the terms), "sign" (the right term with
    the other sign: `b - 5` where the prompt has `b + 5`), "lookup" (any other term that is not the prompt's: the
    wrong number for its label, a label used twice, or a number not among the terms left),
    "arith" (the line's own arithmetic is wrong), then, after the last worked line (index = their count): "short"
    (terms left unused), "order" (every line right but an order that changes the value), "answer" (the answer line
    does not repeat the last total). A diagnostic of the base's failures, not the reward."""
    lines = text.strip().splitlines()
    if not lines or answer_of(lines[-1]) is None:
        return "format", max(0, len(lines) - 1)
    terms, modulus = _signed_terms(problem), _modulus(problem)
    names = term_labels(problem)
    left, unused = list(terms), dict(zip(names, terms[1:]))
    total: int | None = None
    for i, line in enumerate(lines[:-1]):
        parsed = _parse_line(line)
        if parsed is None or (parsed[1] is not None) != bool(names):
            return "format", i
        a, label, step, b = parsed
        if (a not in left) if total is None else (a != total):
            return "copy", i
        if total is None:
            left.remove(a)
        want = unused.pop(label, None) if label is not None else step
        if want != step or step not in left:
            flipped = isinstance(step, int) and (want == -step if label is not None else -step in left)
            return ("sign" if flipped else "lookup"), i
        if apply_term(a, step, modulus) != b:
            return "arith", i
        left.remove(step)
        total = b
    n = len(lines) - 1
    if left:
        return "short", n
    # in an order that changes the value (multiplying terms), every line can be right and the chain still wrong
    if total != chain_value(terms, modulus):
        return "order", n
    return None if answer_of(lines[-1]) == total else ("answer", n)


def line_kinds(problem: Problem, text: str) -> str:
    """One letter per worked line of `text`, a diagnostic of how a chain goes wrong (not the reward): `.` right (its
    total follows from its own left side and is the true running sum of the prompt's terms so far), `f` follows a
    wrong total (its addition is right, its left side was already wrong), `S` resync (its addition is wrong but its
    total is the true running sum: computed from the prompt, not from the chain), `x` slip (neither). The running
    sum takes each line's term by its label when the problem has labels (else as written). Lines that are not
    `a [label] +/- d = b` or `a [label] * m = b` are skipped.
    `line_kinds(p, "043 a + 5 = 048\\n048 b - 3 = 051\\nANSWER: 051")` -> ".x" when the terms are 43, +5, -3."""
    return "".join(kind for _, _, kind in worked_lines(problem, text))


def worked_lines(problem: Problem, text: str) -> list[tuple[str | None, Term, str]]:
    """(label, term, kind) per worked line of `text`: the line's label (None unlabelled), the prompt's term of that
    label (the written step when unlabelled or unknown), and its `line_kinds` letter."""
    terms, modulus = _signed_terms(problem), _modulus(problem)
    by_label = dict(zip(term_labels(problem), terms[1:]))
    true, out = int(terms[0]), []
    for parsed in map(_parse_line, text.strip().splitlines()):
        if parsed is None:
            continue
        a, label, step, b = parsed
        term = by_label.get(label, step)
        true = apply_term(true, term, modulus)
        follows = b == apply_term(a, step, modulus)
        out.append((label, term, "." if follows and b == true else "f" if follows else "S" if b == true else "x"))
    return out


TRACE_KINDS = ("sound", "wrong_line", "other")
"""`trace_kind`'s answers, in the order reports list them."""


def trace_kind(problem: Problem, text: str) -> str:
    """How a trace reaches its answer (a diagnostic for sourced, i.e. right, traces; not the reward): "sound"
    (`chain_is_sound`), "wrong_line" (some worked line is wrong, a slip or a line that follows one: the chain got
    back to the right answer by a resync or by chance, see `line_kinds`), or "other" (every worked line is right but
    the chain is still unsound: a term skipped or used twice, an answer line that does not repeat the last total,
    no worked lines)."""
    if chain_is_sound(problem, text):
        return "sound"
    return "wrong_line" if set(line_kinds(problem, text)) - {"."} else "other"


@dataclass(slots=True)
class ArithVerifier:
    """`prefixrl.protocols.Verifier` for this task: the first `ANSWER: n` equals the reference; the chain is not
    checked, so any order (or any reasoning) that reaches the right number is accepted."""

    def __call__(self, problem: Problem, text: str) -> bool:
        got = answer_of(text)
        return got is not None and str(got) == problem.answer.strip()
