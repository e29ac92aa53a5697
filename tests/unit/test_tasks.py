"""Synthetic arithmetic task (problems, splits, worked chains, verifier) and the in-process sentencepiece tokenizer."""

import random

import pytest

from prefixrl.data import ChatFormatConfig, ProblemSetConfig, chat_prompt_ids, load_problems
from prefixrl.protocols import Tokenizer, Verifier
from prefixrl.records import Problem
from prefixrl.tasks.arith import (
    FIRST_ERRORS,
    LABELS,
    TRACE_KINDS,
    ArithConfig,
    ArithVerifier,
    SlipKinds,
    apply_term,
    chain_is_sound,
    chain_text,
    first_error,
    line_kinds,
    make_problem,
    make_splits,
    prompt_text,
    sft_examples,
    slipped_chain,
    slipped_solutions,
    solutions,
    term_labels,
    tokenizer_corpus,
    trace_kind,
    write_problems,
)
from prefixrl.tokenizer import BOS_ID, EOS_ID, PAD_ID, SentencePieceTokenizer

SMALL = ArithConfig(
    sizes={"train_easy": 200, "train_medium": 50, "train_hard": 50, "heldout_medium": 20, "heldout_hard": 20}
)


@pytest.fixture(scope="module")
def splits():
    return make_splits(SMALL)


@pytest.fixture(scope="module")
def tokenizer(splits):
    return SentencePieceTokenizer.train(tokenizer_corpus(splits, cfg=SMALL))


def test_problem_shape_and_answer():
    p = make_problem(random.Random(0), num_terms=5, cfg=ArithConfig(), problem_id="x", level="medium")
    terms = p.metadata["terms"]
    assert len(terms) == 5 and terms[0] > 0 and p.prompt == prompt_text(terms)
    assert int(p.answer) == sum(terms) and 0 <= int(p.answer) <= 999
    assert prompt_text([37, 58, -12]) == "Compute 37 + 58 - 12."
    assert chain_text([37, -12, 58]) == "37 - 12 = 25\n25 + 58 = 83\nANSWER: 83"


def test_fixed_width_numbers():
    """width pads the first term, every running total and the answer (not the steps); the verifier reads 076 as 76."""
    assert prompt_text([7, 58, -12], width=3) == "Compute 007 + 58 - 12."
    assert chain_text([84, -8, 5], width=3) == "084 - 8 = 076\n076 + 5 = 081\nANSWER: 081"
    cfg = ArithConfig(width=3, first_term_max=999, max_operand=9)
    p = make_problem(random.Random(1), num_terms=6, cfg=cfg, problem_id="w", level="hard")
    assert p.prompt == prompt_text(p.metadata["terms"], width=3) and p.answer == str(sum(p.metadata["terms"]))
    for text in solutions(p, num=4, cfg=cfg):
        assert ArithVerifier()(p, text)
        assert all(len(line.split(" = ")[1]) == 3 for line in text.splitlines()[:-1])
    with pytest.raises(ValueError, match="width=2 cannot hold max_answer=999"):
        ArithConfig(width=2)


def test_labelled_terms():
    """labels name every term after the first; each line repeats the label; orders keep the first term first; the
    sound check follows the labels (a right number under the wrong label is not sound)."""
    assert prompt_text([90, 5, -7], width=3, labels=True) == "Compute 090 a + 5 b - 7."
    assert chain_text([90, -7, 5], width=3, labels=["b", "a"]) == "090 b - 7 = 083\n083 a + 5 = 088\nANSWER: 088"
    cfg = ArithConfig(width=3, first_term_max=999, max_operand=9, labels=True, terms={"hard": 6}, sizes={})
    p = make_problem(random.Random(3), num_terms=6, cfg=cfg, problem_id="l", level="hard")
    assert p.prompt == prompt_text(p.metadata["terms"], width=3, labels=True)
    texts = solutions(p, num=4, cfg=cfg)
    assert len(texts) == 4 and len(set(texts)) == 4
    for text in texts:
        first = text.splitlines()[0]
        assert first.startswith(f"{p.metadata['terms'][0]:03d} ") and ArithVerifier()(p, text)
        assert chain_is_sound(p, text)
    lines = texts[0].splitlines()
    swapped = "\n".join([lines[0].replace(" a ", " b "), *lines[1:]])
    assert not chain_is_sound(p, swapped)
    unlabelled = "\n".join([*(ln.split(" ", 2)[0] + " " + ln.split(" ", 2)[2] for ln in lines[:-1]), lines[-1]])
    assert ArithVerifier()(p, unlabelled) and not chain_is_sound(p, unlabelled)
    with pytest.raises(ValueError, match="labels=True names at most 27 terms"):
        ArithConfig(labels=True, terms={"hard": 30}, sizes={})


def test_random_label_start_wraps_and_spreads_letters():
    """With random_label_start every problem's labels run on cyclically from a random letter (so z is followed by a),
    every letter is used, and solutions and the sound check follow the prompt's labels."""
    cfg = ArithConfig(width=3, first_term_max=999, max_operand=9, labels=True, random_label_start=True,
                      terms={"hard": 14}, sizes={})
    rng = random.Random(0)
    problems = [make_problem(rng, num_terms=14, cfg=cfg, problem_id=f"r{i}", level="hard") for i in range(60)]
    firsts = {term_labels(p)[0] for p in problems}
    assert len(firsts) > 15  # not always `a`
    for p in problems:
        names = term_labels(p)
        assert len(names) == 13 and len(set(names)) == 13
        assert all((ord(b) - ord(a)) % 26 == 1 for a, b in zip(names, names[1:]))
        assert p.prompt == prompt_text(p.metadata["terms"], width=3, labels=names)
        for text in solutions(p, num=3, cfg=cfg):
            assert chain_is_sound(p, text) and ArithVerifier()(p, text)
    assert any("za" in term_labels(p) for p in problems)
    assert term_labels(Problem(problem_id="u", prompt="Compute 37 + 58 - 12.", answer="83")) == ""


def test_slip_kinds_hold_a_seeded_share_of_line_kinds_and_the_teacher_slips_on_those_only():
    """SlipKinds keeps about `fraction` of the (label, step) kinds, the same ones for a seed and others for another;
    slipped_chain with kinds slips only on lines of those kinds, at slip_rate, and the others stay right."""
    labels, steps = list(LABELS[:7]), [*range(1, 10), *range(-9, 0), "*2", "*3"]
    half = SlipKinds(0.5, seed=0)
    assert 0.35 < half.share(labels=labels, terms=steps) < 0.65
    assert half.share(labels=labels, terms=steps) == 78 / 140  # pinned: the set is a stable hash of (seed, kind)
    assert SlipKinds(1.0).share(labels=labels, terms=steps) == 1.0
    assert 0.1 < SlipKinds(0.2, seed=3).share(labels=labels, terms=steps) < 0.3
    members = {(lb, t) for lb in labels for t in steps if (lb, t) in half}
    assert members == {(lb, t) for lb in labels for t in steps if (lb, t) in SlipKinds(0.5, seed=0)}
    assert members != {(lb, t) for lb in labels for t in steps if (lb, t) in SlipKinds(0.5, seed=1)}
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"fraction={bad} must be in"):
            SlipKinds(bad)
    terms = [5000, 3, -4, 7, "*2", -9, 5, "*3", 8]
    names = LABELS[: len(terms) - 1]
    in_set = [(lb, t) in half for lb, t in zip(names, terms[1:])]
    assert any(in_set) and not all(in_set)
    rng, slips, seen = random.Random(0), [0] * len(in_set), 0
    for _ in range(600):
        text = slipped_chain(terms, rng=rng, slip_rate=0.5, max_answer=9999, width=4, labels=names, modulus=10_000,
                             kinds=half)
        total = terms[0]
        for i, (line, t) in enumerate(zip(text.splitlines()[:-1], terms[1:])):
            b = int(line.split()[-1])
            slips[i] += b != apply_term(total, t, 10_000)
            total = b
        seen += 1
    for i, flag in enumerate(in_set):
        assert (0.4 < slips[i] / seen < 0.6) if flag else slips[i] == 0


def test_slipped_chain_writes_random_wrong_totals_and_carries_on():
    """Each line slips with the given probability; after a slip the chain goes on from the written total (every line
    is right given its left side), the totals stay in [0, max_answer], and a slipped chain's answer is wrong."""
    terms = [500, 3, -4, 7, 2, -9, 5, 1, 8]
    assert slipped_chain(terms, rng=random.Random(0), slip_rate=0.0, max_answer=999, width=3) == chain_text(terms,
                                                                                                            width=3)
    p = Problem(problem_id="s", prompt=prompt_text(terms), answer=str(sum(terms)), metadata={"terms": terms})
    rng, slips, lines_seen, wrong_answers, slipped_chains = random.Random(1), 0, 0, 0, 0
    for _ in range(400):
        text = slipped_chain(terms, rng=rng, slip_rate=0.3, max_answer=999, width=3)
        lines = text.splitlines()
        total, slipped = terms[0], False
        for line, t in zip(lines[:-1], terms[1:]):
            a, sign, d, _, b = line.split()
            assert int(a) == total and (-1 if sign == "-" else 1) * int(d) == t and 0 <= int(b) <= 999
            lines_seen += 1
            slips += int(b) != total + t
            slipped |= int(b) != total + t
            total = int(b)
        assert lines[-1] == f"ANSWER: {total:03d}"
        slipped_chains += slipped
        wrong_answers += not ArithVerifier()(p, text)
        assert chain_is_sound(p, text) == (not slipped)
    assert 0.25 < slips / lines_seen < 0.35
    assert wrong_answers >= slipped_chains - 4  # a slip almost never lands back on the right answer
    with pytest.raises(ValueError, match="slip_rate"):
        slipped_chain(terms, rng=rng, slip_rate=1.0, max_answer=999)


def test_slipped_solutions_are_deterministic_per_problem():
    cfg = ArithConfig(width=3, first_term_max=999, max_operand=9, labels=True, random_label_start=True,
                      terms={"hard": 8}, sizes={})
    p = make_problem(random.Random(5), num_terms=8, cfg=cfg, problem_id="d", level="hard")
    a = slipped_solutions(p, num=2, cfg=cfg, slip_rate=0.5)
    assert a == slipped_solutions(p, num=2, cfg=cfg, slip_rate=0.5) and len(a) == 2
    assert [x.splitlines()[0].split()[:4] for x in a] == [x.splitlines()[0].split()[:4] for x in solutions(p, num=2,
                                                                                                          cfg=cfg)]


MUL = ArithConfig(terms={"hard": 6}, sizes={}, max_operand=9, first_term_max=999, width=3, labels=True,
                  multiply_prob=0.4, multipliers=(2, 3))


def _left_to_right(prompt: str) -> int:
    """Oracle: read `Compute 437 a + 5 b * 3.` token by token and apply each operation modulo 1000."""
    words = prompt.removeprefix("Compute ").rstrip(".").split()
    total = int(words[0])
    for op, num in zip(words[2::3], words[3::3]):
        total = {"+": total + int(num), "-": total - int(num), "*": total * int(num)}[op] % 1000
    return total


def test_multiplying_terms_are_applied_left_to_right_modulo():
    """With multiply_prob, some terms are `* m`; the answer is the chain applied left to right modulo max_answer + 1
    (checked against a reading of the prompt text), the worked lines say `* m`, and every solution is sound, right
    and reaches the answer in another order only where the order does not change it."""
    rng = random.Random(7)
    problems = [make_problem(rng, num_terms=6, cfg=MUL, problem_id=f"m{i}", level="hard") for i in range(200)]
    mults = [t for p in problems for t in p.metadata["terms"][1:] if isinstance(t, str)]
    assert 0.3 < len(mults) / (5 * len(problems)) < 0.5 and set(mults) == {"*2", "*3"}
    wrapped = 0
    for p in problems:
        assert p.answer == str(_left_to_right(p.prompt)) and p.metadata["modulus"] == 1000
        chains = solutions(p, num=4, cfg=MUL)
        for text in chains:
            assert chain_is_sound(p, text) and ArithVerifier()(p, text) and set(line_kinds(p, text)) == {"."}
        lines = chains[0].splitlines()[:-1]
        assert [ln.split()[2] for ln in lines] == [prompt_op for prompt_op in p.prompt.split()[3::3]]
        wrapped += any(int(ln.split()[0]) * 3 > 999 and ln.split()[2] == "*" for ln in lines)
    assert wrapped > 20  # the modulo is exercised, not only small totals
    # a line that multiplies wrong is a slip; one that follows it is `f`; the true value after it is a resync `S`
    p = Problem(problem_id="x", prompt="Compute 400 a * 3 b + 5.", answer="205",
                metadata={"terms": [400, "*3", 5], "modulus": 1000})
    assert _left_to_right(p.prompt) == 205
    assert line_kinds(p, "400 a * 3 = 200\n200 b + 5 = 205\nANSWER: 205") == ".."
    assert line_kinds(p, "400 a * 3 = 210\n210 b + 5 = 205\nANSWER: 205") == "xS"
    assert line_kinds(p, "400 a * 3 = 210\n210 b + 5 = 215\nANSWER: 215") == "xf"
    assert line_kinds(p, "400 a * 3 = 1200\n1200 b + 5 = 1205\nANSWER: 205") == "xx"  # the modulo forgotten
    assert trace_kind(p, "400 a * 3 = 210\n210 b + 5 = 205\nANSWER: 205") == "wrong_line"
    assert not chain_is_sound(p, "400 b + 5 = 405\n405 a * 3 = 215\nANSWER: 215")  # right lines, wrong order
    assert chain_is_sound(p, "400 a * 3 = 200\n200 b + 5 = 205\nANSWER: 205")


def test_first_error_names_the_first_wrong_check_and_its_line():
    p = Problem(problem_id="x", prompt="Compute 400 a * 3 b + 5 c - 2.", answer="203",
                metadata={"terms": [400, "*3", 5, -2], "modulus": 1000})
    cases = {
        "400 a * 3 = 200\n200 b + 5 = 205\n205 c - 2 = 203\nANSWER: 203": None,
        "040 a * 3 = 120\n120 b + 5 = 125\n125 c - 2 = 123\nANSWER: 123": ("copy", 0),  # first term misread
        "400 a * 3 = 200\n201 b + 5 = 206\n206 c - 2 = 204\nANSWER: 204": ("copy", 1),
        "400 a * 3 = 200\n200 b + 7 = 207\n207 c - 2 = 205\nANSWER: 205": ("lookup", 1),  # wrong term for b
        "400 a * 3 = 200\n200 b - 5 = 195\n195 c - 2 = 193\nANSWER: 193": ("sign", 1),  # b's term, sign flipped
        "400 a * 3 = 200\n200 b + 5 = 205\n205 c + 2 = 203\nANSWER: 203": ("sign", 2),  # total kept the prompt's
        "400 a * 3 = 200\n200 b + 5 = 205\n205 b + 5 = 210\nANSWER: 210": ("lookup", 2),  # label used twice
        "400 a * 3 = 200\n200 b + 5 = 205\n205 c - 2 = 213\nANSWER: 213": ("arith", 2),
        "400 a * 3 = 1200\n1200 b + 5 = 1205\n1205 c - 2 = 1203\nANSWER: 203": ("arith", 0),  # modulo forgotten
        "400 a * 3 = 200\n200 b + 5 = 205\nANSWER: 205": ("short", 2),
        "400 b + 5 = 405\n405 a * 3 = 215\n215 c - 2 = 213\nANSWER: 213": ("order", 3),
        "400 a * 3 = 200\n200 b + 5 = 205\n205 c - 2 = 203\nANSWER: 204": ("answer", 3),
        "400 a * 3 = 200\nthe rest\nANSWER: 203": ("format", 1),
        "400 a * 3 = 200\n200 b + 5 = 205": ("format", 1),  # cut off: no answer line
        "": ("format", 0),
    }
    for text, want in cases.items():
        assert first_error(p, text) == want, text
        assert chain_is_sound(p, text) == (want is None)
        assert want is None or want[0] in FIRST_ERRORS
    bare = Problem(problem_id="y", prompt="Compute 40 + 5 - 2.", answer="43", metadata={"terms": [40, 5, -2]})
    assert first_error(bare, "40 + 2 = 42\n42 + 5 = 47\nANSWER: 47") == ("sign", 0)  # no labels: -2 written as + 2
    assert first_error(bare, "40 + 7 = 47\n47 - 2 = 45\nANSWER: 45") == ("lookup", 0)


def test_multiplying_chains_slip_over_the_whole_range():
    p = make_problem(random.Random(3), num_terms=6, cfg=MUL, problem_id="s", level="hard")
    texts = slipped_solutions(p, num=1, cfg=MUL, slip_rate=0.5) + [
        t for i in range(300) for t in slipped_solutions(Problem(problem_id=f"s{i}", prompt=p.prompt, answer=p.answer,
                                                                 metadata=p.metadata), num=1, cfg=MUL, slip_rate=0.5)
    ]  # fmt: skip
    kinds = "".join(line_kinds(p, t) for t in texts)
    assert 0.45 < kinds.count("x") / len(kinds) < 0.55  # x: a line that does not follow
    for t in texts:  # each line follows from the written total, so a chain is sound iff it never slipped
        assert set(line_kinds(p, t)) <= {".", "x", "f", "S"}
        assert all(0 <= int(ln.split()[-1]) <= 999 for ln in t.splitlines()[:-1])
    with pytest.raises(ValueError, match="multipliers"):
        ArithConfig(multiply_prob=0.3, multipliers=(1, 2))
    with pytest.raises(ValueError, match="multiply_prob"):
        ArithConfig(multiply_prob=1.0)


def test_splits_sizes_levels_disjoint_and_deterministic(splits):
    assert {k: len(v) for k, v in splits.items()} == SMALL.sizes
    prompts = [p.prompt for ps in splits.values() for p in ps]
    assert len(prompts) == len(set(prompts))
    ids = [p.problem_id for ps in splits.values() for p in ps]
    assert len(ids) == len(set(ids))
    for name, ps in splits.items():
        assert {p.metadata["num_terms"] for p in ps} == {SMALL.terms[name.split("_")[1]]}
    assert make_splits(SMALL) == splits
    assert make_splits(ArithConfig(sizes=SMALL.sizes, seed=1))["heldout_hard"] != splits["heldout_hard"]
    # held-out sets do not depend on how many training problems are drawn
    bigger = ArithConfig(sizes={**SMALL.sizes, "train_easy": 400})
    assert make_splits(bigger)["heldout_hard"] == splits["heldout_hard"]


def test_many_correct_chains_all_accepted(splits):
    verify = ArithVerifier()
    assert isinstance(verify, Verifier)
    p = splits["train_hard"][0]
    chains = solutions(p, num=6, cfg=SMALL)
    assert len(chains) == 6 and len(set(chains)) == 6
    assert chains[0] == chain_text(p.metadata["terms"])
    for text in chains:
        assert verify(p, text) and text.endswith(f"ANSWER: {p.answer}")


def test_chain_is_sound_tells_real_solutions_from_lucky_guesses(splits):
    p = Problem(problem_id="p", prompt="Compute 10 + 20 - 5.", answer="25", metadata={"terms": [10, 20, -5]})
    assert chain_is_sound(p, "10 + 20 = 30\n30 - 5 = 25\nANSWER: 25")
    assert chain_is_sound(p, "20 - 5 = 15\n15 + 10 = 25\nANSWER: 25")  # any order
    assert chain_is_sound(p, "010 + 20 = 030\n030 - 5 = 025\nANSWER: 025")  # padded
    assert not chain_is_sound(p, "10 + 20 = 31\n31 - 5 = 25\nANSWER: 25")  # wrong step, right answer
    assert not chain_is_sound(p, "10 + 20 = 30\n30 - 5 = 25\nANSWER: 26")
    assert not chain_is_sound(p, "10 + 20 = 30\n30 + 20 = 50\n50 - 5 = 45\nANSWER: 45")  # a term twice
    assert not chain_is_sound(p, "10 + 20 = 30\nANSWER: 30")  # a term unused
    assert not chain_is_sound(p, "I know it.\nANSWER: 25")
    for q in splits["train_hard"][:5]:
        assert all(chain_is_sound(q, t) for t in solutions(q, num=3, cfg=SMALL))


def test_line_kinds_tell_slips_from_resyncs_to_the_true_sum():
    p = Problem(problem_id="p", prompt="Compute 043 a + 5 b - 3.", answer="45", metadata={"terms": [43, 5, -3]})
    assert line_kinds(p, "043 a + 5 = 048\n048 b - 3 = 045\nANSWER: 045") == ".."
    assert line_kinds(p, "043 a + 5 = 050\n050 b - 3 = 047\nANSWER: 047") == "xf"  # slip, then follows it
    assert line_kinds(p, "043 a + 5 = 050\n050 b - 3 = 045\nANSWER: 045") == "xS"  # right answer, unsound chain
    assert line_kinds(p, "043 a + 5 = 048\n048 b + 3 = 051\nANSWER: 051") == ".f"  # the term by its label: -3
    assert line_kinds(p, "I know it.\nANSWER: 45") == ""
    lucky = "043 a + 5 = 050\n050 b - 3 = 045\nANSWER: 045"
    assert ArithVerifier()(p, lucky) and not chain_is_sound(p, lucky)


def test_trace_kind_names_how_a_right_trace_got_there():
    p = Problem(problem_id="p", prompt="Compute 043 a + 5 b - 3.", answer="45", metadata={"terms": [43, 5, -3]})
    expected = {"043 a + 5 = 048\n048 b - 3 = 045\nANSWER: 045": "sound",
                "043 a + 5 = 050\n050 b - 3 = 045\nANSWER: 045": "wrong_line",  # slip, then resync
                "043 a + 5 = 048\nANSWER: 045": "other",  # every line right, term b never used
                "I know it.\nANSWER: 45": "other"}
    assert {text: trace_kind(p, text) for text in expected} == expected
    assert set(expected.values()) == set(TRACE_KINDS) == {"sound", "wrong_line", "other"}  # every kind is reachable


def test_verifier_checks_only_the_final_answer():
    verify = ArithVerifier()
    p = Problem(problem_id="p", prompt="Compute 10 + 20 + 30.", answer="60")
    assert verify(p, "10 + 20 = 30\n30 + 30 = 60\nANSWER: 60")
    assert verify(p, "30 + 10 = 40\n40 + 20 = 60\nANSWER: 60")
    assert verify(p, "I just know it.\nANSWER:60")
    assert verify(p, "10 + 20 = 31\nANSWER: 60")  # a wrong step does not matter, only the answer
    assert not verify(p, "10 + 20 = 30\n30 + 30 = 61\nANSWER: 61")
    assert not verify(p, "10 + 20 = 30\n30 + 30 = 60")  # no answer line
    assert not verify(p, "ANSWER: 600")
    assert not verify(p, "ANSWER: 61\nANSWER: 60")  # the first answer counts


def test_sft_examples_and_jsonl_round_trip(splits, tmp_path):
    pairs = sft_examples(splits["train_easy"][:10], per_problem=2, cfg=SMALL)
    assert all(ArithVerifier()(p, text) for p, text in pairs) and len(pairs) >= 10
    path = tmp_path / "hard.jsonl"
    write_problems(path, splits["heldout_hard"])
    loaded = load_problems(ProblemSetConfig(path=str(path), source="arith"))
    assert [(p.problem_id, p.prompt, p.answer) for p in loaded] == [
        (p.problem_id, p.prompt, p.answer) for p in splits["heldout_hard"]
    ]
    assert loaded[0].metadata["terms"] == splits["heldout_hard"][0].metadata["terms"]


def test_config_errors():
    with pytest.raises(ValueError, match="at least 2 terms"):
        ArithConfig(terms={"easy": 1})
    with pytest.raises(ValueError, match="unknown split"):
        ArithConfig(sizes={"train_eazy": 3})
    with pytest.raises(ValueError, match="does not define"):
        ArithConfig(terms={"easy": 3}, sizes={"train_hard": 3})


def test_tokenizer_round_trip_and_specials(tokenizer, splits, tmp_path):
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.vocab_size <= 512  # fits the tiny presets of megatron_ext.spec
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (PAD_ID, BOS_ID, EOS_ID) == (0, 2, 3)
    p = splits["train_hard"][3]
    text = solutions(p, num=1, cfg=SMALL)[0]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([*ids, EOS_ID, PAD_ID]) == text
    assert tokenizer.encode(text, add_special_tokens=True) == [BOS_ID, *ids]
    # prefix text + completion text == full text for every token cut (the reward judges prefix + completion)
    assert all(tokenizer.decode(ids[:h]) + tokenizer.decode(ids[h:]) == text for h in range(len(ids) + 1))
    # unseen characters fall back to bytes
    assert tokenizer.decode(tokenizer.encode("héllo ✓ 42")) == "héllo ✓ 42"
    path = tmp_path / "tok" / "tokenizer.model"
    tokenizer.save(path)
    again = SentencePieceTokenizer.load(path)
    assert again.encode(text) == ids and again.name == tokenizer.name


def test_chat_template(tokenizer, splits):
    p = splits["train_easy"][0]
    conv = [{"role": "user", "content": p.prompt}]
    text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text == f"<|user|>{p.prompt}<|end|>\n<|assistant|>"
    ids = chat_prompt_ids(p, tokenizer=tokenizer, cfg=ChatFormatConfig())
    assert ids == tokenizer.apply_chat_template(conv, add_generation_prompt=True)
    assert ids[-1] == tokenizer.encode("<|assistant|>")[0] and len(tokenizer.encode("<|assistant|>")) == 1
    with pytest.raises(ValueError, match="role 'tool'"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        SentencePieceTokenizer.train(["a b c"], vocab_size=128)
    with pytest.raises(FileNotFoundError, match="no tokenizer model"):
        SentencePieceTokenizer.load(tmp_path / "missing.model")
