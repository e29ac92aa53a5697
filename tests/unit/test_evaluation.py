import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixrl.evaluation import EvalConfig, evaluate, ks_for, pass_at_k
from prefixrl.hard import SelectHardConfig, pass_rate_histogram, select_hard, write_selection
from prefixrl.data import ProblemSetConfig, load_problems
from prefixrl.records import Completion, FinishReason, Problem


@st.composite
def n_c_k(draw):
    n = draw(st.integers(1, 300))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@given(n_c_k())
def test_pass_at_k_matches_exact_binomials(nck):
    n, c, k = nck
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-9)


@given(n_c_k())
def test_pass_at_k_monotone_in_k_and_c(nck):
    n, c, k = nck
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= value - 1e-12
    if c < n:
        assert pass_at_k(n, c + 1, k) >= value - 1e-12


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 8) == 1.0  # n - c < k: every k-subset contains a success
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert 0.0 < pass_at_k(100000, 1, 1) < 1e-4  # no overflow with large n
    for bad in [(0, 0, 1), (5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_ks_for():
    assert ks_for(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert ks_for(6) == [1, 2, 4, 6]
    assert ks_for(1) == [1]


def _problems(num):
    return [Problem(problem_id=f"p{i}", prompt=f"q{i}", answer=str(i)) for i in range(num)]


def _generate_with_correct_counts(correct):
    """Problem i gets correct[i] correct samples (first ones), the rest wrong; one truncated 'correct' sample."""

    def generate(prompts, *, sampling):
        out = []
        for prompt in prompts:
            i = int(bytes(prompt).decode()[1:])
            samples = [Completion(token_ids=[1, 2], text=str(i), finish_reason=FinishReason.STOP)] * correct[i]
            samples += [Completion(token_ids=[1], text=str(i), finish_reason=FinishReason.LENGTH)]
            samples += [Completion(token_ids=[3], text="wrong", finish_reason=FinishReason.STOP)] * sampling.n
            out.append(samples[: sampling.n])
        return out

    return generate


def _verify(problem, text):
    return text == problem.answer


def _fmt(problem):
    return list(problem.prompt.encode())


def test_evaluate_reports_pass_at_k():
    problems = _problems(3)
    report = evaluate(
        problems,
        generate_fn=_generate_with_correct_counts([0, 1, 4]),
        verifier=_verify,
        format_prompt=_fmt,
        cfg=EvalConfig(num_samples=4, problems_per_call=2),
    )
    assert report.num_correct == {"p0": 0, "p1": 1, "p2": 4}  # the truncated correct answer does not count
    assert set(report.pass_at_k) == {1, 2, 4}
    assert report.pass_at_k[1] == pytest.approx((0 + 0.25 + 1) / 3)
    assert report.pass_at_k[4] == pytest.approx((0 + 1 + 1) / 3)
    assert report.metrics()["eval/pass@2"] == pytest.approx((0 + 0.5 + 1) / 3)


def test_select_hard_keeps_zero_success(tmp_path):
    problems = _problems(4)
    cfg = SelectHardConfig(sampling=EvalConfig(num_samples=8, problems_per_call=3), num_bins=4)
    selection = select_hard(
        problems, generate_fn=_generate_with_correct_counts([0, 1, 0, 8]), verifier=_verify, format_prompt=_fmt,
        cfg=cfg,
    )
    assert selection.hard_ids == ["p0", "p2"]
    assert selection.histogram == {"0": 2, "(0.00, 0.25]": 1, "(0.25, 0.50]": 0, "(0.50, 0.75]": 0,
                                   "(0.75, 1.00]": 1}
    write_selection(tmp_path / "hard.jsonl", selection, problems)
    reloaded = load_problems(ProblemSetConfig(path=str(tmp_path / "hard.jsonl")))
    assert [p.problem_id for p in reloaded] == ["p0", "p2"]
    assert reloaded[0].metadata["num_correct"] == 0


def test_histogram_bin_edges():
    hist = pass_rate_histogram({"a": 1, "b": 2, "c": 3, "d": 4}, k=4, num_bins=2)
    assert hist == {"0": 0, "(0.00, 0.50]": 2, "(0.50, 1.00]": 2}
