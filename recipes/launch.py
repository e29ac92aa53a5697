"""Launch a recipe through nemo-run: what `prefixrl launch RECIPE --executor local|torchrun|slurm [--dryrun] k=v`
calls.

    launch("prefixrl_tiny_cpu_1n2c", executor="torchrun", dryrun=False, overrides=["steps=5"])
    launch("prefixrl_llama31_70b_8n8g", executor="slurm", dryrun=True, overrides=["cluster.partition=batch"])

The task is `run.Partial(<entry>, cfg_dict=to_dict(cfg))`, where the entry is named by a dotted string
(`TRAIN_ENTRY`, `prefixrl.train:main`) and imported only when a launch builds the Partial, so importing `recipes`
never imports the trainer or megatron. Relative paths in the config are made absolute first (nemo-run runs the task
in its own experiment directory). Slurm notes (../shared/notes/platform.md, section 9): `account` must be set,
`packager=run.Packager()` avoids the git-archive packager, `LocalTunnel(job_dir="")` writes the sbatch script where
sbatch reads it, NEMORUN_HOME must not contain "/nemo_run", and without slurmdbd `sacct` is replaced by the stand-in
`slurm/bin/sacct` for nemo-run's status polling.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from prefixrl.config import TrainConfig, apply_overrides, to_dict
from recipes._base import REPO
from recipes.prefixrl import get_recipe

logger = logging.getLogger(__name__)

TRAIN_ENTRY = "prefixrl.train:main"
"""`module:function` of the task nemo-run runs; it takes `cfg_dict` (the output of `prefixrl.config.to_dict`)."""
SACCT_STANDIN_DIR = REPO / "slurm" / "bin"
Executor = Literal["local", "torchrun", "slurm"]
_PATH_KEYS = ("logging.out_dir", "checkpoint.dir", "data.problems", "data.traces", "data.pool", "data.eval_problems",
              "model.path", "model.tokenizer")  # fmt: skip


def resolve_entry(entry: str) -> Callable[..., Any]:
    """Import `module:function`; ValueError naming the fix when it does not exist."""
    module_name, _, fn_name = entry.partition(":")
    if not fn_name:
        raise ValueError(f"entry {entry!r} is not 'module:function', e.g. {TRAIN_ENTRY!r}")
    fn = getattr(importlib.import_module(module_name), fn_name, None)
    if not callable(fn):
        raise ValueError(f"entry {entry!r}: {module_name} has no function {fn_name!r}")
    return fn


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with relative path fields resolved against the current directory (tiny preset names are kept)."""
    d = to_dict(cfg)
    fixes = []
    for key in _PATH_KEYS:
        section, name = key.split(".")
        value = d[section][name]
        if value is not None and not os.path.isabs(value) and ("/" in value or os.path.exists(value)):
            fixes.append(f"{key}={Path(value).resolve()}")
    return apply_overrides(cfg, fixes)


def to_partial(cfg: TrainConfig, *, entry: str = TRAIN_ENTRY) -> Any:
    """nemo-run task running `entry(cfg_dict=...)` with `cfg` as a JSON-safe dict."""
    import nemo_run as run

    return run.Partial(resolve_entry(entry), cfg_dict=to_dict(cfg))


def env_vars(cfg: TrainConfig) -> dict[str, str]:
    """Environment of the task: the repo on PYTHONPATH, offline HF, and NCCL settings on GPUs."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if cfg.cluster.accelerator == "gpu":
        env.update(
            CUDA_DEVICE_MAX_CONNECTIONS="1",  # Megatron: keeps TP/SP communication ordered with compute
            TORCH_NCCL_ASYNC_ERROR_HANDLING="1",  # a hung collective fails the job instead of stalling it
            NCCL_DEBUG="WARN",
        )
    return env


def make_executor(kind: Executor, cfg: TrainConfig) -> Any:
    """The nemo-run executor for `kind`, sized from `cfg.cluster`."""
    import nemo_run as run

    c = cfg.cluster
    if kind == "local":
        if c.world_size != 1:
            raise ValueError(f"executor 'local' runs one process but {cfg.run_name} needs {c.world_size} ranks; use "
                             "--executor torchrun (one node) or slurm")  # fmt: skip
        return run.LocalExecutor(env_vars=env_vars(cfg))
    if kind == "torchrun":
        if c.num_nodes != 1:
            raise ValueError(f"executor 'torchrun' runs on this machine only but {cfg.run_name} needs {c.num_nodes} "
                             "nodes; use --executor slurm")  # fmt: skip
        return run.LocalExecutor(ntasks_per_node=c.gpus_per_node, launcher="torchrun", env_vars=env_vars(cfg))
    if kind == "slurm":
        home = os.environ.get("NEMORUN_HOME", "")
        if "/nemo_run" in home:
            raise ValueError(f"NEMORUN_HOME={home} contains '/nemo_run', which nemo-run rewrites in the sbatch "
                             "script; choose another directory, e.g. ~/.nemorun")  # fmt: skip
        ex = run.SlurmExecutor(
            account=c.account, partition=c.partition, nodes=c.num_nodes, ntasks_per_node=c.gpus_per_node,
            gpus_per_node=c.gpus_per_node if c.accelerator == "gpu" else None, time=c.time_limit,
            tunnel=run.LocalTunnel(job_dir=""), packager=run.Packager(), env_vars=env_vars(cfg),
        )  # fmt: skip
        ex.launcher = "torchrun"  # nemo-run then runs one task per node: torchrun --nproc-per-node gpus_per_node
        return ex
    raise ValueError(f"unknown executor {kind!r}; use local, torchrun or slurm")


def _use_sacct_standin() -> None:
    """Put `slurm/bin/sacct` first on PATH when the real sacct has no accounting storage (no slurmdbd)."""
    sacct = shutil.which("sacct")
    if sacct and str(Path(sacct).parent) == str(SACCT_STANDIN_DIR):
        return
    out = subprocess.run(["sacct", "-n"], capture_output=True, text=True) if sacct else None
    if out is None or "accounting storage is disabled" in (out.stdout + out.stderr).lower() or out.returncode:
        logger.warning("sacct has no accounting storage here; nemo-run polls job states through %s/sacct",
                       SACCT_STANDIN_DIR)  # fmt: skip
        os.environ["PATH"] = f"{SACCT_STANDIN_DIR}{os.pathsep}{os.environ['PATH']}"


def launch(
    recipe_name: str,
    *,
    executor: Executor,
    dryrun: bool,
    overrides: Sequence[str] = (),
    entry: str = TRAIN_ENTRY,
    wait: bool = True,
) -> str:
    """Build the recipe, apply overrides, and run (or with `dryrun`, print) it through nemo-run.

    Returns the experiment id. With `wait`, blocks until the task ends and raises RuntimeError unless it succeeded;
    without it (Slurm), returns once the job is submitted.
    """
    import nemo_run as run
    from nemo_run.config import get_nemorun_home

    cfg = absolute_paths(apply_overrides(get_recipe(recipe_name)(), list(overrides)))
    ex = make_executor(executor, cfg)
    if executor == "slurm" and not dryrun:
        _use_sacct_standin()
    exp_id = f"{cfg.run_name}_{time.time_ns()}"
    with run.Experiment(cfg.run_name, executor=ex, id=exp_id, log_level="WARN") as exp:
        exp.add(to_partial(cfg, entry=entry), name="train")
        if dryrun:
            exp.dryrun()
            return exp_id
        exp.run(sequential=True, detach=not wait)
    # Leaving the `with` block is where nemo-run waits for the task (unless detached).
    states = [str(job.state) for job in exp.jobs]
    if wait and any("SUCCEEDED" not in s for s in states):
        logs = Path(get_nemorun_home()) / "experiments" / cfg.run_name / exp_id
        raise RuntimeError(f"{recipe_name} via {executor} ended with {states}; logs under {logs}")
    return exp_id
