"""Rejection-sampling sourcer: killed mid-run (exception from generate, truncated shard line) and resumed."""

import logging

import pytest

from prefixrl.flops import FlopCounter
from prefixrl.records import Completion, FinishReason, Problem
from prefixrl.shards import encode_record, read_records
from prefixrl.sourcer import SourcerConfig, charge_sourcing, load_traces, read_progress, run_sourcer

# problem index -> the fake model's per-problem sample number at which it first answers correctly (None: never)
SUCCESS_AT = {0: 2, 1: 7, 2: None, 3: 0, 4: 13, 5: 5}
MAX_ATTEMPTS = 40


class Killed(Exception):
    pass


class FakeModel:
    """Scripted generate function. Its per-problem sample counters persist across 'runs', like a real model would
    keep being random; `kill_after` raises on that call, simulating the process dying mid-run."""

    def __init__(self):
        self.counters = {i: 0 for i in SUCCESS_AT}
        self.calls = 0
        self.kill_after = None
        self.requested = []

    def __call__(self, prompts, *, sampling):
        self.calls += 1
        if self.kill_after is not None and self.calls > self.kill_after:
            raise Killed
        out = []
        for prompt in prompts:
            i = int(bytes(prompt).decode().removeprefix("Q"))
            self.requested.append(f"p{i}")
            samples = []
            for _ in range(sampling.n):
                correct = self.counters[i] == SUCCESS_AT[i]
                text = f"answer {i}" if correct else f"attempt {self.counters[i]}"
                samples.append(Completion(token_ids=list(text.encode()), text=text, finish_reason=FinishReason.STOP))
                self.counters[i] += 1
            out.append(samples)
        return out


def _problems():
    return [Problem(problem_id=f"p{i}", prompt=f"Q{i}", answer=f"answer {i}") for i in SUCCESS_AT]


def _verify(problem, text):
    return text == problem.answer


def _fmt(problem):
    return list(problem.prompt.encode())


def _cfg(out_dir, **kw):
    return SourcerConfig(out_dir=str(out_dir), model="fake", tokenizer="bytes", max_attempts=MAX_ATTEMPTS,
                         samples_per_round=4, problems_per_round=2, **kw)


def _check_final(out_dir):
    progress, _ = read_progress(out_dir)
    assert set(progress) == {f"p{i}" for i in SUCCESS_AT}
    assert all(p.done for p in progress.values())
    for i, succ in SUCCESS_AT.items():
        p = progress[f"p{i}"]
        assert p.num_attempts <= MAX_ATTEMPTS
        if succ is None:
            assert p.traces == [] and p.num_attempts == MAX_ATTEMPTS  # cap respected across runs
        else:
            assert len(p.traces) == 1, f"p{i} has {len(p.traces)} traces"
            assert p.traces[0].text == f"answer {i}"
    traces = load_traces(out_dir)
    assert len({t.trace_id for t in traces}) == len(traces) == 5
    return progress


def test_uninterrupted_run(tmp_path, caplog):
    model = FakeModel()
    with caplog.at_level(logging.INFO, logger="prefixrl.sourcer"):
        summary = run_sourcer(_cfg(tmp_path), _problems(), generate_fn=model, verifier=_verify, format_prompt=_fmt)
    progress = _check_final(tmp_path)
    rounds = [r.getMessage() for r in caplog.records if "problems finished" in r.getMessage()]
    total = sum(p.num_attempts for p in progress.values())
    assert len(rounds) > 1 and "rank 0: 6 of 6" not in rounds[0]  # one line per round, not one at the end
    assert rounds[-1] == f"rank 0: 6 of 6 problems finished (5 solved, 1 unsolved at the cap), {total} attempts so far"
    assert summary.num_solved == 5 and summary.num_unsolved == 1
    # with no kill, recorded attempts are exact: the round (of 4) containing the success is the last
    assert progress["p3"].num_attempts == 4 and progress["p4"].num_attempts == 16
    assert progress["p4"].traces[0].attempt_index == 14 and progress["p4"].traces[0].num_attempts == 16
    assert progress["p0"].num_prompt_tokens == 4 * 2 and progress["p0"].traces[0].prompt_ids == list(b"Q0")
    assert progress["p0"].num_completion_tokens == sum(len(f"attempt {k}") for k in (0, 1, 3)) + len("answer 0")
    # a third run samples nothing
    again = FakeModel()
    summary = run_sourcer(_cfg(tmp_path), _problems(), generate_fn=again, verifier=_verify, format_prompt=_fmt)
    assert again.calls == 0 and summary.num_resumed_done == 6


def test_killed_and_truncated_then_resumed(tmp_path):
    model = FakeModel()
    model.kill_after = 5
    with pytest.raises(Killed):
        run_sourcer(_cfg(tmp_path), _problems(), generate_fn=model, verifier=_verify, format_prompt=_fmt)
    (shard,) = tmp_path.glob("traces-*.jsonl")
    before, _ = read_progress(tmp_path)
    assert any(p.done and p.traces for p in before.values())  # something was finished before the kill

    # the kill also tore the last line in half
    text = shard.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    torn_record = read_records(shard)[0][-1]
    shard.write_text(text[: last_start + (len(text) - last_start) // 2])
    progress_before, damaged = read_progress(tmp_path)
    assert damaged == 1
    torn_problem = torn_record["problem_id"]
    assert progress_before.get(torn_problem) is None or (
        progress_before[torn_problem].num_attempts == before[torn_problem].num_attempts - torn_record["num_attempts"]
    )
    done_before = {pid for pid, p in progress_before.items() if p.done}
    traces_before = {t.trace_id: t for p in progress_before.values() for t in p.traces}

    model.kill_after = None
    model.requested = []
    summary = run_sourcer(_cfg(tmp_path), _problems(), generate_fn=model, verifier=_verify, format_prompt=_fmt)
    assert summary.num_damaged_lines == 1 and summary.num_resumed_done == len(done_before)
    assert not done_before & set(model.requested), "a finished problem was resampled"
    assert len(list(tmp_path.glob("traces-*.jsonl"))) == 2  # resumed into a new part; the old shard is untouched
    progress = _check_final(tmp_path)
    for trace_id, trace in traces_before.items():  # no durable trace lost
        assert progress[trace.problem_id].traces[0] == trace, trace_id


def test_ranks_partition_problems(tmp_path):
    model = FakeModel()
    for rank in range(2):
        run_sourcer(_cfg(tmp_path, rank=rank, world_size=2), _problems(), generate_fn=model, verifier=_verify,
                    format_prompt=_fmt)
    assert {p.name.split("-")[1] for p in tmp_path.glob("traces-*.jsonl")} == {"r00000", "r00001"}
    _check_final(tmp_path)


def test_traces_reverified_on_load(tmp_path):
    run_sourcer(_cfg(tmp_path), _problems(), generate_fn=FakeModel(), verifier=_verify, format_prompt=_fmt)
    stricter = lambda problem, text: _verify(problem, text) and problem.problem_id != "p1"  # noqa: E731
    kept = load_traces(tmp_path, problems=_problems(), verifier=stricter)
    assert sorted(t.problem_id for t in kept) == ["p0", "p3", "p4", "p5"]
    with pytest.raises(ValueError, match="problems="):
        load_traces(tmp_path, verifier=stricter)


def test_damaged_line_in_the_middle_is_an_error(tmp_path):
    shard = tmp_path / "traces-r00000-p0000.jsonl"
    good = encode_record({"problem_id": "p0", "num_attempts": 1, "num_prompt_tokens": 1, "num_completion_tokens": 1,
                          "traces": [], "done": False})
    shard.write_text(good + good.replace("p0", "p9", 1) + good)  # checksum of line 2 no longer matches
    with pytest.raises(ValueError, match="line 2"):
        read_progress(tmp_path)


def test_charge_sourcing_counts_unsolved_separately(tmp_path):
    run_sourcer(_cfg(tmp_path), _problems(), generate_fn=FakeModel(), verifier=_verify, format_prompt=_fmt)
    progress, _ = read_progress(tmp_path)
    counter = FlopCounter(num_params=10)
    charge_sourcing(counter, progress)
    total_tokens = sum(p.num_sampled_tokens for p in progress.values())
    assert counter.sourcing == 2 * 10 * total_tokens
    assert counter.sourcing_unsolved == 2 * 10 * progress["p2"].num_sampled_tokens


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        _cfg(tmp_path, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_attempts"):
        SourcerConfig(out_dir=str(tmp_path), model="m", tokenizer="t", max_attempts=0)


def test_first_success_rounds_read_off_the_sourcing_log(tmp_path):
    """The equal-difficulty test (`prefixrl.bench.difficulty`) reads each problem's first-success round from the
    attempts the sourcer spent: whole rounds of samples_per_round, stopping at the first trace."""
    from prefixrl.bench.difficulty import first_success_rounds

    run_sourcer(_cfg(tmp_path), _problems(), generate_fn=FakeModel(), verifier=_verify, format_prompt=_fmt)
    progress, _ = read_progress(tmp_path)
    rounds = first_success_rounds({k: (p.num_attempts, p.solved) for k, p in progress.items()}, 4)
    assert rounds == {f"p{i}": None if s is None else s // 4 + 1 for i, s in SUCCESS_AT.items()}
