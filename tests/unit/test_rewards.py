"""math-verify on real answer formats from ../shared/data."""

import json

import pytest

from conftest import DATA
from prefixrl.records import FinishReason, Problem
from prefixrl.rewards import BinaryReward, ExactMatchVerifier, MathVerifier, RewardConfig


def _row(name, **match):
    with (DATA / f"{name}.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if all(row[k] == v for k, v in match.items()):
                return Problem(problem_id=str(row["id"]), prompt=row["problem"], answer=str(row["answer"]))
    raise LookupError(match)


@pytest.fixture(scope="module")
def verifier():
    return MathVerifier()


@pytest.mark.parametrize(
    "answer, response, expected",
    [
        ("\\frac{1}{2}", "so the probability is \\boxed{0.5}.", True),
        ("\\frac{1}{2}", "The answer is $\\boxed{\\dfrac{1}{2}}$", True),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False),
        ("0.5", "\\boxed{\\frac{1}{2}}", True),
        ("025", "Therefore the answer is \\boxed{25}.", True),
        ("25", "\\boxed{025}", True),
        ("025", "\\boxed{250}", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "We get \\boxed{(3, \\frac{\\pi}{2})}", True),
        ("18", "She makes 9 * 2 = 18 dollars.\nThe answer is 18", True),
        ("k \\neq 1", "\\boxed{k \\neq 1}", True),
    ],
)
def test_math_formats(verifier, answer, response, expected):
    problem = Problem(problem_id=f"{answer}|{response}", prompt="q", answer=answer)
    assert verifier(problem, response) is expected


def test_real_rows(verifier):
    aime = _row("aime2024", answer="025")
    assert verifier(aime, "... so m+n = \\boxed{25}") and not verifier(aime, "\\boxed{24}")
    gsm = _row("gsm8k_test", id=0)  # answer "18"
    assert verifier(gsm, "Janet makes \\boxed{18} dollars.") and not verifier(gsm, "\\boxed{16}")
    polar = _row("math500", id="test/precalculus/807.json")
    assert verifier(polar, "\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}")
    assert not verifier(polar, "\\boxed{\\left(3, \\pi\\right)}")


def test_reference_answers_of_shared_sets_parse(verifier):
    problems = []
    for name in ("math500", "aime2024", "aime2025"):
        with (DATA / f"{name}.jsonl").open() as f:
            problems += [Problem(problem_id=f"{name}/{r['id']}", prompt="q", answer=str(r["answer"]))
                         for r in map(json.loads, f)]
    assert verifier.check_references(problems[:120] + problems[-60:]) == {}


def test_unparsable_reference_is_counted_not_raised():
    verifier = MathVerifier()
    bad = Problem(problem_id="bad", prompt="q", answer="\\weird{")
    good = Problem(problem_id="good", prompt="q", answer="3")
    assert verifier.check_references([bad, good]) == {"bad": "\\weird{"}
    assert verifier(bad, "\\boxed{\\weird{") is False
    assert verifier(good, "\\boxed{3}") is True


def test_binary_reward_judges_prefix_plus_completion_and_truncation():
    reward = BinaryReward(verifier=MathVerifier())
    problem = Problem(problem_id="p", prompt="q", answer="\\frac{1}{2}")
    prefix, completion = "We compute 1/2 and so the answer is \\boxed{\\frac", "{1}{2}}."
    assert reward(problem, prefix + completion, finish_reason=FinishReason.STOP) == 1.0
    assert reward(problem, completion, finish_reason=FinishReason.STOP) == 0.0
    assert reward(problem, prefix + completion, finish_reason=FinishReason.LENGTH) == 0.0
    lenient = BinaryReward(verifier=MathVerifier(), cfg=RewardConfig(truncated_reward=None))
    assert lenient(problem, prefix + completion, finish_reason=FinishReason.LENGTH) == 1.0
    with pytest.raises(ValueError, match="correct_reward"):
        RewardConfig(correct_reward=0.0)


def test_exact_match_verifier():
    problem = Problem(problem_id="s", prompt="reverse abc", answer="cba")
    assert ExactMatchVerifier()(problem, "thinking...\n cba \n")
    assert not ExactMatchVerifier()(problem, "cba\nabc")
