import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import ByteTokenizer, CharTokenizer
from prefixrl.prefixes import (
    AdaptiveCutConfig,
    AdaptiveCuts,
    CutConfig,
    FixedRandomCuts,
    PoolConfig,
    TooLongPolicy,
    build_pool,
    cut_points,
    read_pool,
    write_pool,
)
from prefixrl.records import OffPolicyTrace, Problem

cut_ranges = st.tuples(st.floats(0.01, 0.98), st.floats(0.0, 1.0)).map(lambda t: (t[0], t[0] + t[1] * (0.99 - t[0])))


@given(n=st.integers(2, 50000), rng=cut_ranges, num_cuts=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_cut_points_properties(n, rng, num_cuts, seed):
    low, high = rng
    cuts = cut_points(n, num_cuts=num_cuts, low=low, high=high, seed=seed)
    assert cuts == cut_points(n, num_cuts=num_cuts, low=low, high=high, seed=seed)  # deterministic per seed
    assert len(cuts) == num_cuts and cuts == sorted(cuts)
    assert all(1 <= h <= n - 1 for h in cuts)
    lo, hi = max(1, math.ceil(low * n)), min(n - 1, math.floor(high * n))
    if lo <= hi:
        assert all(low * n <= h <= high * n for h in cuts)
        if hi - lo + 1 >= num_cuts:
            assert len(set(cuts)) == num_cuts  # distinct when possible
        else:
            assert set(cuts) == set(range(lo, hi + 1))


def test_cut_points_seed_matters_and_paper_defaults():
    draws = {tuple(cut_points(10000, seed=s)) for s in range(20)}
    assert len(draws) == 20
    assert all(4000 <= h <= 8000 for d in draws for h in d)


@pytest.mark.parametrize("low, high", [(0.0, 0.5), (0.5, 1.0), (0.8, 0.4), (-0.1, 0.5), (0.2, 1.2)])
def test_cut_range_validation(low, high):
    with pytest.raises(ValueError, match="0 < low <= high < 1"):
        cut_points(100, low=low, high=high, seed=0)
    with pytest.raises(ValueError, match="0 < low <= high < 1"):
        CutConfig(low=low, high=high)


def test_cut_points_short_trace():
    assert cut_points(2, num_cuts=3, seed=0) == [1, 1, 1]
    with pytest.raises(ValueError, match="cannot be cut"):
        cut_points(1, seed=0)


def _trace(problem_id, text, tokenizer_name, tok, prompt_ids):
    return OffPolicyTrace(
        trace_id=f"{problem_id}#1", problem_id=problem_id, prompt_ids=prompt_ids, trace_ids=tok.encode(text),
        text=text, model="m", tokenizer=tokenizer_name, num_attempts=3, num_sampled_tokens=30, attempt_index=2,
    )


def test_build_pool_mix_masking_and_round_trip(tmp_path):
    tok = CharTokenizer()
    problems = [Problem(problem_id=f"p{i}", prompt=f"what is {i}?", answer=str(i)) for i in range(4)]
    def fmt(p):
        return tok.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True)

    sourcing_prompt = [7, 7, 7]  # differs from fmt(): same-family prefixes must keep the sourcing-time prompt ids
    traces = [_trace(f"p{i}", "abcdefghijklmnopqrst" + f" so \\boxed{{{i}}}", "char", tok, sourcing_prompt)
              for i in range(3)]  # p3 has no trace
    kw = dict(strategy=FixedRandomCuts(cfg=CutConfig(seed=1)), cfg=PoolConfig(max_prompt_tokens=10_000),
              format_prompt=fmt, policy_tokenizer_name="char", policy_tokenizer=tok)
    pool, stats = build_pool(problems, traces, **kw)
    assert (stats.num_prefixed, stats.num_unprefixed, stats.num_problems_without_trace) == (9, 3, 1)
    assert len(pool) == 12 and all(p.problem.problem_id != "p3" for p in pool)
    for item in pool:
        if item.is_prefixed:
            trace = traces[int(item.problem.problem_id[1:])]
            h = len(item.prefix_ids)
            assert item.prompt_ids == sourcing_prompt
            assert item.prefix_ids == trace.trace_ids[:h]  # exact ids, no re-tokenisation
            assert item.input_ids == sourcing_prompt + trace.trace_ids[:h]
            assert 0.4 <= item.cut_frac <= 0.8 and item.cut_frac == h / len(trace.trace_ids)
            assert item.prefix_text == trace.text[:h]
        else:
            assert item.prefix_ids == [] and item.prompt_ids == fmt(item.problem)
    write_pool(tmp_path / "pool.jsonl", pool)
    assert read_pool(tmp_path / "pool.jsonl") == pool
    # the same seed gives the same pool
    assert build_pool(problems, traces, **kw)[0] == pool


def test_too_long_prefix_skip_or_fail():
    tok = CharTokenizer()
    problems = [Problem(problem_id="p0", prompt="q", answer="1")]
    traces = [_trace("p0", "x" * 100, "char", tok, [1, 2])]
    kw = dict(strategy=FixedRandomCuts(), format_prompt=lambda p: [1, 2], policy_tokenizer_name="char",
              policy_tokenizer=tok)
    pool, stats = build_pool(problems, traces, cfg=PoolConfig(max_prompt_tokens=50), **kw)
    assert stats.num_skipped_too_long == 3 - stats.num_prefixed and stats.num_skipped_too_long >= 1
    with pytest.raises(ValueError, match="max_prompt_tokens=50"):
        build_pool(problems, traces, cfg=PoolConfig(max_prompt_tokens=50, too_long=TooLongPolicy.FAIL), **kw)


def test_cross_family_trace_is_retokenised():
    policy_tok, source_tok = CharTokenizer(), ByteTokenizer()
    problems = [Problem(problem_id="p0", prompt="q", answer="1")]
    text = "caf\u00e9 thinking... step two"
    trace = _trace("p0", text, "bytes", source_tok, [999])
    fmt = lambda p: [5, 6]  # noqa: E731
    kw = dict(strategy=FixedRandomCuts(cfg=CutConfig(num_cuts=2)), cfg=PoolConfig(max_prompt_tokens=1000),
              format_prompt=fmt, policy_tokenizer_name="char", policy_tokenizer=policy_tok)
    with pytest.raises(ValueError, match="source_tokenizers"):
        build_pool(problems, [trace], **kw)
    pool, stats = build_pool(problems, [trace], source_tokenizers={"bytes": source_tok}, **kw)
    assert stats.num_cross_family == 1
    for item in [p for p in pool if p.is_prefixed]:
        assert item.prompt_ids == [5, 6]  # the policy's own chat formatting
        assert text.startswith(item.prefix_text.rstrip("\ufffd"))
        assert item.prefix_ids == policy_tok.encode(item.prefix_text)


def test_adaptive_cuts_move_earlier_with_success():
    strategy = AdaptiveCuts(cfg=AdaptiveCutConfig(start_frac=0.8, step=0.2, success_threshold=0.5, min_frac=0.3))
    trace = _trace("p0", "y" * 100, "char", CharTokenizer(), [1])
    assert strategy.cuts(trace) == [80]
    assert strategy.update("p0", 0.25) == 0.8  # below threshold: unchanged
    assert strategy.update("p0", 0.5) == pytest.approx(0.6)
    assert strategy.cuts(trace) == [60]
    strategy.update("p0", 1.0)
    assert strategy.update("p0", 1.0) == 0.3  # clamped at min_frac
    assert strategy.frac("other") == 0.8
    with pytest.raises(ValueError, match="min_frac"):
        AdaptiveCutConfig(start_frac=0.2, min_frac=0.5)
