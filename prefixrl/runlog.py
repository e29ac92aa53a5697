"""Per-step metrics of a run: one interface fanning out to JSONL and TensorBoard, resume truncation, PNG plots.

    log = MetricsLog(out_dir, jsonl=True, tensorboard=True, resume_step=start_step)
    log.write(step, metrics)           # one JSON line per step ({"step": step, ...}) + TensorBoard scalars
    log.close()
    write_plots(out_dir / "curves.png", read_metrics(out_dir / "metrics.jsonl"))

Resume: a run resumed from the checkpoint of step k discards every metrics line with step > k (steps after the last
checkpoint that a kill cut short, and a torn last line) and recomputes those steps, so metrics.jsonl holds each step
once, from the run that checkpointed it. TensorBoard events of those steps are purged with `purge_step=k + 1`.
Nothing here imports megatron or vllm; tensorboard and matplotlib are imported only when used.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete JSON line of a metrics file (a torn last line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: str | os.PathLike, *, keep_through_step: int) -> int:
    """Rewrite `path` keeping complete lines with step <= keep_through_step; returns how many lines were dropped."""
    p = Path(path)
    if not p.exists():
        return 0
    lines = p.read_text().splitlines()
    kept = [json.dumps(r) for r in read_metrics(p) if r.get("step", 0) <= keep_through_step]
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, p)
    return len(lines) - len(kept)


class MetricsLog:
    """JSONL + TensorBoard sink for one run directory (rank 0 only)."""

    def __init__(self, out_dir: str | os.PathLike, *, jsonl: bool, tensorboard: bool, resume_step: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / METRICS_FILE
        self._file = None
        self._tb = None
        if jsonl:
            dropped = truncate_metrics(self.path, keep_through_step=resume_step)
            if dropped:
                logger.info("resume at step %d: dropped %d metrics lines of steps after the checkpoint",
                            resume_step, dropped)  # fmt: skip
            self._file = self.path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {**metrics, "step": step}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def first_last(history: Sequence[dict[str, float]], key: str, *, window: int = 5) -> list[float]:
    """Mean of `key` over the first and the last `window` steps that have it (NaN, NaN if none)."""
    vals = [h[key] for h in history if key in h]
    if not vals:
        return [float("nan"), float("nan")]
    w = max(1, min(window, len(vals) // 2))
    return [sum(vals[:w]) / w, sum(vals[-w:]) / w]


def write_plots(path: str | os.PathLike, history: Sequence[dict[str, float]]) -> None:
    """reward/prefixed and reward/unprefixed vs step and vs FLOPs (sourcing included), and policy/entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [h for h in history if "flops/total" in h]
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("reward/prefixed", "reward/unprefixed"):
        axes[0].plot(steps, [h.get(key, math.nan) for h in history], label=key)
        axes[1].plot([h["flops/total"] for h in history], [h.get(key, math.nan) for h in history], label=key)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("FLOPs (sourcing included)")
    axes[2].plot(steps, [h.get("policy/entropy", math.nan) for h in history])
    axes[2].set_xlabel("step")
    axes[2].set_title("policy/entropy")
    for ax in axes[:2]:
        ax.legend()
        ax.set_ylabel("reward")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
