"""The equal-difficulty test on sourcing logs (`prefixrl.bench.difficulty`)."""

import math
import random

import pytest

from prefixrl.bench.difficulty import (
    FirstErrorTally,
    chance_floor,
    chi2_sf,
    first_success_rounds,
    geometric_fit,
    rates_by_group,
)


def test_chi2_sf_matches_table_values():
    # critical values from a chi-square table (upper 5 % and 1 % points) and the closed form for 2 dof
    for x, dof, want in [(3.841, 1, 0.05), (14.067, 7, 0.05), (18.475, 7, 0.01), (67.505, 50, 0.05)]:
        assert chi2_sf(x, dof) == pytest.approx(want, abs=2e-4)
    for x in (0.3, 2.0, 9.0, 40.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
    assert chi2_sf(0.0, 3) == 1.0
    with pytest.raises(ValueError, match="dof=0"):
        chi2_sf(1.0, 0)


def _rounds(ps: list[float], *, per_round: int, max_rounds: int, rng: random.Random) -> list[int | None]:
    out: list[int | None] = []
    for p in ps:
        q = 1 - (1 - p) ** per_round
        out.append(next((r for r in range(1, max_rounds + 1) if rng.random() < q), None))
    return out


def test_equal_problems_pass_the_test_and_mixed_ones_fail_it():
    rng = random.Random(0)
    same = _rounds([0.005] * 400, per_round=64, max_rounds=8, rng=rng)
    fit = geometric_fit(same, max_rounds=8, samples_per_round=64)
    assert fit["p_value"] > 0.05 and fit["p_per_sample"] == pytest.approx(0.005, rel=0.15)
    assert sum(fit["counts"]) == 400 and sum(fit["expected"]) == pytest.approx(400, abs=0.1)
    long_cap = geometric_fit(_rounds([0.005] * 256, per_round=64, max_rounds=16, rng=rng), max_rounds=16,
                             samples_per_round=64)  # fmt: skip
    assert long_cap["bins"] < 17 and long_cap["dof"] == long_cap["bins"] - 2  # sparse late rounds join "never"
    assert long_cap["p_value"] > 0.05
    mixed = _rounds([0.03] * 200 + [0.0005] * 200, per_round=64, max_rounds=8, rng=rng)
    assert geometric_fit(mixed, max_rounds=8, samples_per_round=64)["p_value"] < 1e-6
    ids = [f"q{i}" for i in range(400)]
    by = rates_by_group(dict(zip(ids, mixed)), {pid: "easy" if i < 200 else "hard" for i, pid in enumerate(ids)},
                        max_rounds=8, samples_per_round=64)  # fmt: skip
    assert by["easy"]["sourced"] == 1.0 and by["hard"]["p_per_sample"] == pytest.approx(0.0005, rel=0.35)
    assert by["easy"]["problems"] == by["hard"]["problems"] == 200


def test_first_success_rounds_and_errors():
    assert first_success_rounds({"a": (64, True), "b": (130, True), "c": (512, False)}, 64) == {"a": 1, "b": 3,
                                                                                                 "c": None}
    tiny = geometric_fit([1, 2, None, 1, 3, None], max_rounds=8, samples_per_round=64)
    assert tiny["bins"] == 2 and tiny["dof"] == 0 and math.isnan(tiny["p_value"])  # too few problems for a test
    with pytest.raises(ValueError, match="outside 1..max_rounds=8"):
        geometric_fit([1, 9], max_rounds=8, samples_per_round=64)
    with pytest.raises(ValueError, match="max_rounds=1"):
        geometric_fit([1], max_rounds=1, samples_per_round=64)


def test_chance_floor_matches_a_simulated_guesser_and_the_session_15_figure():
    rng = random.Random(0)
    space, cap, k, problems = 50, 40, 8, 4000
    answers = [rng.randrange(space) for _ in range(problems)]
    sourced = sum(any(rng.randrange(space) == a for _ in range(cap)) for a in answers) / problems
    hit_in_k = sum(any(rng.randrange(space) == a for _ in range(k)) for a in answers) / problems
    floor = chance_floor(space, k=k, cap=cap)
    assert floor["sourced_fraction"] == pytest.approx(sourced, abs=0.03)  # 0.554; 3 standard errors is 0.024
    assert floor["pass_at_k"] == pytest.approx(hit_in_k, abs=0.015)  # 0.149
    assert chance_floor(1000, k=8, cap=1024)["sourced_fraction"] == pytest.approx(0.641, abs=1e-3)
    assert chance_floor(10_000, k=8, cap=1024)["sourced_fraction"] == pytest.approx(0.0973, abs=1e-3)
    with pytest.raises(ValueError, match="answer_space=0"):
        chance_floor(0, k=8, cap=1024)


def test_first_error_tally_kinds_count_wrong_samples_and_line_rates_count_every_sample():
    from prefixrl.records import Problem
    from prefixrl.tasks.arith import ArithVerifier

    p = Problem(problem_id="x", prompt="Compute 400 a * 3 b + 5.", answer="205",
                metadata={"terms": [400, "*3", 5], "modulus": 1000})
    tally = FirstErrorTally(ArithVerifier())
    texts = ["400 a * 3 = 200\n200 b + 5 = 205\nANSWER: 205",  # right: not counted
             "400 a * 3 = 200\n200 b + 7 = 207\nANSWER: 207", "400 a * 3 = 200\n200 b + 6 = 206\nANSWER: 206",
             "400 a * 3 = 210\n210 b + 5 = 215\nANSWER: 215"]
    assert [tally(p, t) for t in texts] == [True, False, False, False]
    fig = tally.figures()
    assert fig["wrong_samples"] == 3 and fig["by_kind"] == {"lookup": 2 / 3, "arith": 1 / 3}
    assert fig["top"] == [["lookup", 1, 2 / 3], ["arith", 0, 1 / 3]]
    # every sample counts for the per-line rate: 4 reach line 0 and 1 fails there; 3 reach line 1 and 2 fail there
    assert fig["line_failure"] == [[0, 4, 1 / 4], [1, 3, 2 / 3]]


def test_kind_hazards_judge_lines_from_a_right_start_by_the_teacher_s_kinds():
    """kind_hazards gives (kind in the set, right) for each line up to the first wrong one; the tally sums them per
    side of the set (a right line after a wrong one is not judged), and without kinds it records nothing."""
    from prefixrl.bench.difficulty import kind_hazards
    from prefixrl.records import Problem
    from prefixrl.tasks.arith import ArithVerifier

    p = Problem(problem_id="x", prompt="Compute 400 a * 3 b + 5 c - 2.", answer="203",
                metadata={"terms": [400, "*3", 5, -2], "modulus": 1000})
    kinds = {("b", 5)}
    right = "400 a * 3 = 200\n200 b + 5 = 205\n205 c - 2 = 203\nANSWER: 203"
    slip_b = "400 a * 3 = 200\n200 b + 5 = 215\n215 c - 2 = 213\nANSWER: 213"
    slip_a = "400 a * 3 = 300\n300 b + 5 = 305\n305 c - 2 = 303\nANSWER: 303"
    assert kind_hazards(p, right, kinds) == [(False, True), (True, True), (False, True)]
    assert kind_hazards(p, slip_b, kinds) == [(False, True), (True, False)]
    assert kind_hazards(p, slip_a, kinds) == [(False, False)]
    tally = FirstErrorTally(ArithVerifier(), kinds)
    assert [tally(p, t) for t in (right, slip_b, slip_a)] == [True, False, False]
    assert tally.figures()["line_right_by_slip_kind"] == {"slip_kinds": [1, 2], "other_kinds": [3, 4]}
    plain = FirstErrorTally(ArithVerifier())
    plain(p, slip_b)
    assert "line_right_by_slip_kind" not in plain.figures()
