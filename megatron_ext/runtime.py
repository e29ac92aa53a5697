"""Process-group and Megatron parallel-state setup, for torchrun and for a single plain process.

    from megatron_ext import runtime
    runtime.initialize(tensor_parallel=2, pipeline_parallel=1, seed=0)   # under torchrun --nproc-per-node 2
    ...
    runtime.shutdown()

Backend: nccl with CUDA, gloo without. Without CUDA the CPU compatibility layer (`megatron_ext.compat`) is entered
here and left by `shutdown`. Seeds python, numpy, torch and megatron's model-parallel RNG tracker.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_ext.compat import CpuCompat

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _State:
    compat: CpuCompat | None = None
    owns_process_group: bool = False
    env_set: tuple[str, ...] = ()
    """The launcher variables `initialize` set itself (a one-process run): `shutdown` removes them, so a later
    subprocess does not inherit a MASTER_PORT this process may still hold."""
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    seed: int = 0


_STATE: _State | None = None


def free_port() -> int:
    """A free TCP port on loopback (for single-process runs outside torchrun)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group() -> tuple[bool, tuple[str, ...]]:
    """Initialise torch.distributed if needed: (whether this call created the group, the variables it set)."""
    if dist.is_initialized():
        return False, ()
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env_set = tuple(k for k in defaults if k not in os.environ)
    for k in env_set:
        os.environ[k] = defaults[k]
    if "MASTER_PORT" not in os.environ:
        if os.environ["WORLD_SIZE"] != "1":
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_PORT is unset: launch with torchrun (it sets both)")
        os.environ["MASTER_PORT"] = str(free_port())
        env_set += ("MASTER_PORT",)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return True, env_set


def device() -> torch.device:
    """This rank's device: its CUDA device with a GPU, the CPU otherwise. Tensors handed to torch.distributed
    collectives must live here (NCCL reduces only CUDA tensors)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def seed_all(seed: int) -> None:
    """Seed python, numpy, torch and megatron's model-parallel RNG tracker (after parallel state exists)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def initialize(*, tensor_parallel: int = 1, pipeline_parallel: int = 1, seed: int = 0) -> None:
    """Set up torch.distributed, the CPU compatibility layer (without CUDA), Megatron parallel state and seeds.

    The world size must be a multiple of tensor_parallel * pipeline_parallel; the rest is data parallel.
    """
    global _STATE
    if _STATE is not None:
        raise RuntimeError("megatron_ext.runtime is already initialised; call shutdown() first")
    if tensor_parallel < 1 or pipeline_parallel < 1:
        raise ValueError(f"parallel sizes must be >= 1, got tensor_parallel={tensor_parallel}, "
                         f"pipeline_parallel={pipeline_parallel}")
    state = _State(tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel, seed=seed)
    state.owns_process_group, state.env_set = _init_process_group()
    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        if state.owns_process_group:
            dist.destroy_process_group()
        for k in state.env_set:
            os.environ.pop(k, None)
        raise ValueError(
            f"world size {world} is not a multiple of tensor_parallel * pipeline_parallel = "
            f"{tensor_parallel} * {pipeline_parallel}; launch {tensor_parallel * pipeline_parallel}*k processes "
            "(torchrun --nproc-per-node) or change the parallel sizes"
        )
    if not torch.cuda.is_available():
        state.compat = CpuCompat()
        state.compat.enter()
    _STATE = state
    try:
        from megatron.core import parallel_state

        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel
        )
        seed_all(seed)
    except BaseException:
        shutdown()
        raise
    logger.info("initialised: world=%d tp=%d pp=%d dp=%d backend=%s", world, tensor_parallel, pipeline_parallel,
                world // (tensor_parallel * pipeline_parallel), dist.get_backend())


def is_initialized() -> bool:
    return _STATE is not None


def shutdown() -> None:
    """Tear down Megatron parallel state, the process group (if `initialize` created it) and the CPU layer."""
    global _STATE
    if _STATE is None:
        return
    state, _STATE = _STATE, None
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if state.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
    finally:
        for k in state.env_set:
            os.environ.pop(k, None)
        if state.compat is not None:
            state.compat.exit()
