"""Launch a worker function on N local ranks with torchrun (gloo on CPU) and fail the test with its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_workers(func: str, *, nproc: int = 2, timeout: int = 600, **kwargs) -> str:
    """Run `tests.dist.workers.<func>(**kwargs)` on `nproc` ranks; return combined output, raise on failure."""
    from megatron_ext.runtime import free_port

    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", "-m", "tests.dist.workers", func, json.dumps(kwargs)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-80:])
        raise AssertionError(f"{func} failed on {nproc} ranks (exit {proc.returncode}):\n{tail}")
    return out
