"""Multi-rank synthetic preparation: rank 0 prepares in a one-process subprocess (no torchrun variables leak into
it), the other ranks wait for its READY marker and give up with a clear error after the timeout."""

import threading
import time

import pytest

from prefixrl import session
from prefixrl.config import apply_overrides
from recipes.prefixrl import get_recipe

FAKE_PREPARE = """
import os, sys
from pathlib import Path
leaked = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT") if k in os.environ]
d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
(d / "READY").write_text(",".join(leaked) + "|seed=" + sys.argv[2])
"""


def test_rank0_prepares_in_a_clean_one_process_env(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "PREPARE_PROGRAM", FAKE_PREPARE)
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(k, v)
    cfg = apply_overrides(get_recipe("prefixrl_tiny_cpu_1n2c")(), ["seed=7"])
    session.prepare_synthetic_for_ranks(cfg, tmp_path, rank=0)
    assert (tmp_path / session.SYNTHETIC_DIR / "READY").read_text() == "|seed=7"


def test_other_ranks_wait_for_ready_then_time_out(tmp_path):
    cfg = get_recipe("prefixrl_tiny_cpu_1n2c")()
    ready = tmp_path / session.SYNTHETIC_DIR / "READY"

    def write_later():
        time.sleep(0.5)
        ready.parent.mkdir(parents=True)
        ready.write_text("")

    t = threading.Thread(target=write_later)
    t.start()
    session.prepare_synthetic_for_ranks(cfg, tmp_path, rank=1, timeout_s=30)
    t.join()
    with pytest.raises(TimeoutError, match="rank 1: rank 0 did not finish preparing"):
        session.prepare_synthetic_for_ranks(cfg, tmp_path / "other", rank=1, timeout_s=0.1)
