"""CPU compatibility layer for megatron-core's CUDA-only call sites.

megatron-core assumes CUDA in a handful of places that no config flag avoids (the table in
`../shared/notes/platform.md`, section 4). Without a GPU, `megatron_ext.runtime.initialize` enters this layer and
`shutdown` leaves it; nothing here runs at import time. While active it:

- enters a `TorchFunctionMode` that rewrites `device="cuda..."` keyword arguments to cpu, makes `Tensor.cuda()` and
  `Tensor.pin_memory()` identities, maps `Tensor.to("cuda")` to cpu, drops `pin_memory=True`, and makes a
  zero-argument `Tensor.type()` report the `torch.cuda.*Tensor` name (the optimizer's type checks);
- replaces `torch.cuda` attributes (current_device, synchronize, RNG get/set/seed, Event, Stream, current_stream,
  default_stream, stream, empty_cache, the memory statistics and the nvtx backend) and megatron's private CUDA RNG
  helpers with CPU equivalents;
- quiets the `megatron.core.tensor_parallel.random` logger.

Each replaced call site has a test in tests/unit/test_compat.py that fails without the layer. The layer is checked
against the megatron-core version it was written for and refuses others (set PREFIXRL_ALLOW_UNTESTED_MCORE=1 to try).

Limitation: TorchFunctionMode stacks are thread-local; a `device="cuda"` factory call in a thread megatron starts
would still fail. None is on the paths this project exercises.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

TESTED_MCORE_VERSIONS = ("0.16.1",)
"""megatron-core releases whose CUDA-only call sites this layer covers."""


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA placements to the CPU for every torch call on this thread."""

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        if func is torch.Tensor.to:
            args = tuple("cpu" if _is_cuda_device(a) else a for a in args)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        return func(*args, **kwargs)


class _DummyEvent:
    """Stands in for `torch.cuda.Event`: every method is a no-op; elapsed time reads 0."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, *args: Any, **kwargs: Any) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class _DummyStream:
    """Stands in for `torch.cuda.Stream`: synchronisation is a no-op on the CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def record_event(self, *args: Any) -> _DummyEvent:
        return _DummyEvent()

    def query(self) -> bool:
        return True


class _NoNvtx:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _cpu_get_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    # Not torch.manual_seed: it calls torch.cuda.manual_seed_all, which is this function while the layer is active.
    torch.default_generator.manual_seed(int(seed))


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _cuda_replacements() -> dict[str, Any]:
    return {
        "current_device": lambda: "cpu",
        "synchronize": _noop,
        "get_rng_state": _cpu_get_rng_state,
        "set_rng_state": _cpu_set_rng_state,
        "manual_seed": _cpu_manual_seed,
        "manual_seed_all": _cpu_manual_seed,
        "Event": _DummyEvent,
        "Stream": _DummyStream,
        "current_stream": lambda *a, **k: _DummyStream(),
        "default_stream": lambda *a, **k: _DummyStream(),
        "stream": lambda *a, **k: contextlib.nullcontext(),
        "empty_cache": _noop,
        "memory_stats": lambda *a, **k: collections.defaultdict(int),
        "memory_allocated": _zero,
        "memory_reserved": _zero,
        "max_memory_allocated": _zero,
        "reset_peak_memory_stats": _noop,
    }


def check_mcore_version() -> str:
    """Return the installed megatron-core version; raise if this layer was not written for it."""
    from megatron.core import package_info

    version = package_info.__version__
    if version not in TESTED_MCORE_VERSIONS and os.environ.get("PREFIXRL_ALLOW_UNTESTED_MCORE") != "1":
        raise RuntimeError(
            f"megatron-core {version} is installed, but the CPU compatibility layer was written and tested for "
            f"{', '.join(TESTED_MCORE_VERSIONS)}. Install megatron-core=={TESTED_MCORE_VERSIONS[-1]} (make setup), "
            "or set PREFIXRL_ALLOW_UNTESTED_MCORE=1 to try anyway and extend megatron_ext/compat.py where it fails."
        )
    return version


class CpuCompat:
    """The scoped CPU compatibility layer. `enter()` patches, `exit()` restores every original."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []
        self._mode: _CudaToCpuMode | None = None
        self._log_level: int | None = None

    @property
    def active(self) -> bool:
        return self._mode is not None

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name, None)))
        setattr(owner, name, value)

    def enter(self) -> None:
        if self.active:
            raise RuntimeError("the CPU compatibility layer is already active; call exit() first")
        check_mcore_version()
        from megatron.core.tensor_parallel import random as mcore_random

        for name, value in _cuda_replacements().items():
            self._patch(torch.cuda, name, value)
        # megatron's private copies of the RNG helpers read CUDA generators directly.
        self._patch(mcore_random, "_get_cuda_rng_state", _cpu_get_rng_state)
        self._patch(mcore_random, "_set_cuda_rng_state", _cpu_set_rng_state)
        # nvtx functions may be bound at import time: replace the backend object, not the functions.
        self._patch(torch.cuda.nvtx, "_nvtx", _NoNvtx())
        rng_logger = logging.getLogger("megatron.core.tensor_parallel.random")
        self._log_level = rng_logger.level
        rng_logger.setLevel(logging.ERROR)
        self._mode = _CudaToCpuMode()
        self._mode.__enter__()
        logger.debug("CPU compatibility layer entered")

    def exit(self) -> None:
        if not self.active:
            return
        assert self._mode is not None
        self._mode.__exit__(None, None, None)
        self._mode = None
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
        logging.getLogger("megatron.core.tensor_parallel.random").setLevel(self._log_level or logging.NOTSET)
        logger.debug("CPU compatibility layer left")


@contextlib.contextmanager
def cpu_compat() -> Iterator[CpuCompat]:
    """Context-manager form of the layer, for tests and scripts that do not go through `runtime.initialize`."""
    layer = CpuCompat()
    layer.enter()
    try:
        yield layer
    finally:
        layer.exit()
