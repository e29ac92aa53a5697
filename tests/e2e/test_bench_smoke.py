"""`prefixrl bench reproduce --preset smoke` end to end on the real stack: every method runs, the table, the regime
figures and the plots are produced, a run stopped by SIGTERM continues from its snapshot, and a restart after losing
one (method, seed) result redoes only that one.
No thresholds on the (noisy, tiny) numbers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefixrl.bench.methods import METHODS
from prefixrl.tasks.arith import FIRST_ERRORS

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _bench(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefixrl.cli", "bench", "reproduce", "--preset", "smoke", "--out",
                           str(out), *extra],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)  # fmt: skip


def test_smoke_benchmark_runs_reports_and_resumes(tmp_path):
    out = tmp_path / "bench"
    # SIGTERM once PrefixRL has finished: the method running then (rl) snapshots at the end of its step, exit 0.
    proc = subprocess.Popen([sys.executable, "-m", "prefixrl.cli", "bench", "reproduce", "--preset", "smoke", "--out",
                             str(out)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while not (out / "runs" / "prefixrl" / "seed0.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "prefixrl did not finish in 900 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "stopped on a signal" in stdout, stderr[-4000:]
    snaps = list((out / "runs").glob("*/seed0.snapshot"))
    assert len(snaps) == 1 and (snaps[0] / "run_state.json").exists(), snaps
    stopped = snaps[0].parent.name
    assert not (out / "runs" / stopped / "seed0.json").exists()
    at = json.loads((snaps[0] / "run_state.json").read_text())["step"]
    assert at >= 1

    r = _bench(out)  # continues the stopped run from its snapshot, then the rest
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"{stopped} seed 0: resuming from the snapshot at step {at}" in r.stderr
    assert not list((out / "runs").glob("*/seed*.snapshot")), "snapshots are removed once a run has finished"
    resumed = json.loads((out / "runs" / stopped / "seed0.json").read_text())
    assert resumed["resumed_at"] == [at] and resumed["wall_s"] > 0
    assert [x["step"] for x in resumed["steps"]] == list(range(1, len(resumed["steps"]) + 1)) and len(
        resumed["steps"]) > at, resumed["steps"]  # each step once, none redone, and the run went on
    assert [p["step"] for p in resumed["points"]].count(0) == 1
    table = (out / "report" / "table.md").read_text()
    for method in METHODS:
        assert f"| {method} | 1 |" in table, f"{method} missing from the table:\n{table}"
    assert "regime: hard =" in r.stdout and "success from a 40-80% prefix" in r.stdout
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["rows"]) == set(METHODS) and "gain_vs_rl" in results and "speedup_vs_sft_rl" in results
    for png in ("reward_vs_flops.png", "entropy.png"):
        assert (out / "report" / png).stat().st_size > 10_000
    assert "gain_at_rl_flops" in results and "rl" in results["at_prefixrl_rl_flops"]
    pre = json.loads((out / "runs" / "prefixrl" / "seed0.json").read_text())  # where its train_hard chains fail
    assert all("train_hard/line_failure" in p for p in pre["points"]), pre["points"]
    fails = results["line_failure"]["prefixrl"]["final"]
    assert [row[0] for row in fails] == list(range(len(fails))) and all(0 <= rate <= 1 for _, _, rate in fails)
    regime = json.loads((out / "regime" / "regime.json").read_text())  # the probe's pick, confirmed at the base
    assert regime["probe"]["confirm_for"] == {"checkpoint": "base", "problems": 8, "target": 0.5}
    assert regime["hard_level_terms"] == max(int(lv) for lv in regime["probe"]["confirm"])
    assert set(regime["base_first_errors"]["by_kind"]) <= {*FIRST_ERRORS, "none"}  # the base's failures, by kind
    assert regime["chance"]["p_per_sample"] == 1 / regime["answer_space"]
    budget = json.loads((out / "runs" / "prefixrl" / "seed0.json").read_text())["points"][-1]
    trace_run = json.loads((out / "runs" / "prefixed_only" / "seed0.json").read_text())  # pays the sourcing
    assert trace_run["points"][-1]["flops"] >= budget["flops"] and len(trace_run["steps"]) < 4, trace_run["points"]
    rl_run = json.loads((out / "runs" / "rl" / "seed0.json").read_text())  # spends the sourcing FLOPs on RL steps
    end = rl_run["points"][-1]
    assert end["flops"] > budget["flops_rl"] and (end["flops"] >= budget["flops"] or len(rl_run["steps"]) == 4), end

    # Lose one result: the restart recomputes it only.
    lost = out / "runs" / "luffy" / "seed0.json"
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/seed0.json")}
    r = _bench(out)
    assert r.returncode == 0, r.stderr[-4000:]
    assert lost.exists() and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert "bench: luffy seed 0" in r.stderr and "bench: rl seed 0" not in r.stderr

    # A new directory reuses the trained base (no SFT) and starts from a saved checkpoint; a checkpoint that was not
    # saved is refused with the saved ones listed.
    bad = _bench(tmp_path / "bad", "--base-from", str(out), "--base-checkpoint", "step-99999")
    assert bad.returncode == 2 and "choose one of ['base', 'step-00030']" in bad.stderr, bad.stderr[-2000:]
    r = _bench(tmp_path / "again", "--base-from", str(out), "--base-checkpoint", "step-00030")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "sft step" not in r.stderr
    again = json.loads((tmp_path / "again" / "regime" / "regime.json").read_text())
    assert again["base_checkpoint"] == "step-00030" and again["probe"]["confirm_for"]["checkpoint"] == "step-00030"

    # The regime stage alone with preset fields overridden (and the paper's hard-problem filter on the real engine);
    # the override is recorded, so another one is refused.
    reg = tmp_path / "regime"
    r = _bench(reg, "--base-from", str(out), "--set", "regime.prefix_probe_problems=4", "--set",
               "regime.hard_filter_k=2", "--regime-only")  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert "regime: hard =" in r.stdout and "sound traces" in r.stdout and "| method |" not in r.stdout
    assert (reg / "regime" / "regime.json").exists() and not (reg / "runs").exists()
    hard = json.loads((reg / "regime" / "regime.json").read_text())["hard_filter"]
    assert hard["k"] == 2 and hard["train_hard"]["kept"] == 16 and hard["heldout_hard"]["kept"] == 8
    assert hard["samples"] == 2 * (hard["train_hard"]["checked"] + hard["heldout_hard"]["checked"]) > 0
    assert hard["flops"] > 0 and "regime: hard filter (pass@2 = 0) kept" in r.stderr
    assert json.loads((reg / "settings.json").read_text())["regime"]["prefix_probe_problems"] == 4
    bad = _bench(reg, "--set", "regime.prefix_probe_problems=5", "--regime-only")
    assert bad.returncode != 0 and "other settings" in bad.stderr, bad.stderr[-2000:]

    # A base warm-started from a saved checkpoint (a curriculum): its SFT starts from those weights and tokenizer.
    ckpt = out / "regime" / "checkpoints" / "step-00030"
    warm = tmp_path / "warm"
    r = _bench(warm, "--set", f"regime.warm_start={ckpt}", "--set", "regime.sft_steps=4", "--set",
               "regime.clean_steps=2", "--regime-only")  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert "sft step 4/4" in r.stderr and (warm / "regime" / "regime.json").exists()
    assert (warm / "regime" / "init" / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert (warm / "regime" / "tokenizer.model").read_bytes() == (out / "regime" / "tokenizer.model").read_bytes()


def test_unknown_preset_lists_them(tmp_path):
    r = subprocess.run([sys.executable, "-m", "prefixrl.cli", "bench", "reproduce", "--preset", "huge", "--out",
                        str(tmp_path / "x")], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "available presets: full, full-kinds, full-v19, full-v8, small, smoke" in r.stderr
    assert not (tmp_path / "x").exists()
