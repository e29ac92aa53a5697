"""Stand-in for the trainer entry (`prefixrl.train:main`) until it exists: proves the launch wiring end to end.

As a nemo-run task: `recipes.launch.launch(..., entry="tests.e2e.standin:main")`. Under torchrun (the sbatch
script sets `PREFIXRL_TRAIN="-m tests.e2e.standin"`): `python -m tests.e2e.standin --recipe NAME [key=value ...]`.

It initialises Megatron's parallel state at the config's TP/PP over all launched ranks (`megatron_ext.runtime`),
all-reduces the TP ranks' numbers over the TP group, and rank 0 appends one metrics line to
`<logging.out_dir>/metrics.jsonl`. On SIGUSR1 (forwarded by slurm/prefixrl.sbatch before the time limit) it writes
`<out_dir>/checkpoint` and exits, like the trainer will; started again with that file present, it "resumes".
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def main(cfg_dict: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_ext import runtime
    from prefixrl.config import from_dict

    cfg = from_dict(cfg_dict)
    out = Path(cfg.logging.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = {"signal": False}
    signal.signal(signal.SIGUSR1, lambda *_: stop.update(signal=True))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg.check(world)
    runtime.initialize(tensor_parallel=cfg.parallel.tensor_parallel, pipeline_parallel=cfg.parallel.pipeline_parallel,
                       seed=cfg.seed)  # fmt: skip
    try:
        rank = dist.get_rank()
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value, group=parallel_state.get_tensor_model_parallel_group())
        resumed = (out / "checkpoint").exists()
        # Wait (bounded) for a SIGUSR1 when asked to, so the signal -> checkpoint -> requeue path can be exercised.
        deadline = time.monotonic() + float(os.environ.get("PREFIXRL_STANDIN_WAIT_S", "0")) * (not resumed)
        if rank == 0 and deadline > time.monotonic():
            (out / "waiting").write_text(str(os.getpid()))
        while time.monotonic() < deadline and not stop["signal"]:
            time.sleep(0.2)
        if rank == 0:
            if stop["signal"]:
                (out / "checkpoint").write_text("step=0\n")
            record = {"step": 0, "standin/tp_sum": value.item(), "world_size": world,
                      "tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
                      "run_name": cfg.run_name, "resumed": resumed, "signalled": stop["signal"],
                      "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}  # fmt: skip
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
    finally:
        runtime.shutdown()


def _cli(argv: list[str]) -> None:
    from prefixrl.config import apply_overrides, to_dict
    from recipes.launch import absolute_paths
    from recipes.prefixrl import get_recipe

    if len(argv) < 2 or argv[0] != "--recipe":
        raise SystemExit("usage: python -m tests.e2e.standin --recipe NAME [key=value ...]")
    main(to_dict(absolute_paths(apply_overrides(get_recipe(argv[1])(), argv[2:]))))


if __name__ == "__main__":
    _cli(sys.argv[1:])
