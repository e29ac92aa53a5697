"""Tiny prepared synthetic-task data for trainer e2e tests: a 30-step SFT base and oracle traces (the task's worked
solutions), built by `prefixrl.pipeline.prepare_synthetic` in a subprocess (it needs a one-process Megatron world)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREPARE = """
import sys
from megatron_ext import runtime
from prefixrl.demo import DemoSettings
from prefixrl.pipeline import prepare_synthetic
runtime.initialize(seed=0)
try:
    prepare_synthetic(sys.argv[1], s=DemoSettings(sft_steps=30, sft_batch=16, hard_pool=16), traces="oracle")
finally:
    runtime.shutdown()
"""


def prepare_tiny_data(out: Path, *, env: dict[str, str]) -> Path:
    """Write tokenizer.model, base/, problems.jsonl and traces/ under `out` (about 20 s on 2 cores)."""
    r = subprocess.run([sys.executable, "-c", PREPARE, str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def data_overrides(data: Path) -> list[str]:
    """`key=value` overrides that point a tiny recipe at prepared data (instead of preparing the task itself)."""
    return [f"model.path={data}/base", f"model.tokenizer={data}/tokenizer.model", f"data.problems={data}/problems.jsonl",
            f"data.traces={data}/traces"]  # fmt: skip
