"""The one place a full PrefixRL run config is assembled; public recipes (`recipes.prefixrl`) call `_base` with what
differs. Fields a recipe does not set keep their defaults from `prefixrl.config` (the paper's where it has one)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from prefixrl.config import ClusterConfig, LoggingConfig, ModelConfig, ParallelConfig, TrainConfig, apply_overrides

REPO = Path(__file__).resolve().parents[1]
MODELS_ENV = "PREFIXRL_MODELS"
"""Environment variable naming the directory that holds the HF model directories; default: the shared
`model_configs` (config.json only, enough to build and validate every recipe without weights)."""


def model_path(name: str) -> str:
    """Absolute path of HF model directory `name` under $PREFIXRL_MODELS (or the shared model_configs)."""
    root = Path(os.environ.get(MODELS_ENV, REPO.parent / "shared" / "data" / "model_configs"))
    return str((root / name).resolve())


def _base(
    *,
    name: str,
    model: str,
    num_nodes: int,
    gpus_per_node: int,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    engine_tensor_parallel: int = 1,
    accelerator: Literal["gpu", "cpu"] = "gpu",
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """A complete run: GPU runs train in bfloat16 with sequence parallelism when TP > 1; CPU runs in float32.
    `overrides` are dotted key=value settings for everything else (sizes, lr, ...)."""
    gpu = accelerator == "gpu"
    cfg = TrainConfig(
        run_name=name,
        model=ModelConfig(path=model, dtype="bfloat16" if gpu else "float32"),
        parallel=ParallelConfig(
            tensor_parallel=tensor_parallel,
            pipeline_parallel=pipeline_parallel,
            engine_tensor_parallel=engine_tensor_parallel,
            sequence_parallel=gpu and tensor_parallel > 1,
        ),
        cluster=ClusterConfig(num_nodes=num_nodes, gpus_per_node=gpus_per_node, accelerator=accelerator),
        logging=LoggingConfig(out_dir=f"runs/{name}"),
    )
    return apply_overrides(cfg, list(overrides))


def _fp8(cfg: TrainConfig) -> TrainConfig:
    """The FP8 variant of a GPU recipe: Transformer Engine hybrid format (E4M3 forward, E5M2 backward)."""
    name = f"{cfg.run_name}_fp8"
    return apply_overrides(cfg, ["model.fp8=hybrid", f"run_name={name}", f"logging.out_dir=runs/{name}"])
