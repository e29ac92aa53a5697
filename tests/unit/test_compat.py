"""Each CUDA-only call site the CPU compatibility layer patches fails without it and works with it."""

import pytest
import torch

from megatron_ext.compat import CpuCompat, cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is for CPU-only machines")


def _global_memory_buffer():
    from megatron.core.utils import GlobalMemoryBuffer  # DotProductAttention's scratch buffer (local spec)

    return GlobalMemoryBuffer().get_tensor((2, 3), torch.float32, "test")


def _rng_tracker_fork():
    from megatron.core.tensor_parallel import random as mrandom

    mrandom.model_parallel_cuda_manual_seed(0, tp_rank=0, ep_rank=0, etp_rank=0)
    with mrandom.get_cuda_rng_tracker().fork():
        return torch.rand(2)


def _schedule_token_counter():
    # pipeline_parallel/schedules.py: torch.zeros([], dtype=torch.int, device="cuda")
    return torch.zeros([], dtype=torch.int, device="cuda")


def _optimizer_type_check():
    # optimizer.py / distrib_optimizer.py: param.type() in ["torch.cuda.FloatTensor", ...]
    name = torch.nn.Parameter(torch.zeros(2)).type()
    if name != "torch.cuda.FloatTensor":
        raise TypeError(f"Wrapped parameters must be one of torch.cuda.FloatTensor, ... Received {name}")
    return name


CALL_SITES = {
    "global_memory_buffer": _global_memory_buffer,
    "rng_tracker_fork": _rng_tracker_fork,
    "schedule_token_counter": _schedule_token_counter,
    "optimizer_type_check": _optimizer_type_check,
    "p2p_synchronize": lambda: torch.cuda.synchronize(),
    "inference_event": lambda: torch.cuda.Event(enable_timing=True).record(),
    "grad_sync_stream": lambda: torch.cuda.current_stream().synchronize(),
    "pin_memory": lambda: torch.empty_like(torch.zeros(3), pin_memory=True),
    "tensor_cuda": lambda: torch.zeros(2).cuda(),
    "nvtx": lambda: torch.cuda.nvtx.range_push("x"),
    "memory_stats": lambda: torch.cuda.memory_stats()["allocated_bytes.all.current"],
}


@pytest.mark.parametrize("site", sorted(CALL_SITES))
def test_call_site_fails_without_layer_and_works_with_it(site):
    fn = CALL_SITES[site]
    with pytest.raises((AssertionError, RuntimeError, TypeError, KeyError, Exception)):
        fn()
    with cpu_compat():
        fn()
    with pytest.raises(Exception):  # the layer is scoped: leaving it restores the failure
        fn()


def test_exit_restores_every_original():
    originals = {name: getattr(torch.cuda, name) for name in ("current_device", "synchronize", "Event", "Stream")}
    layer = CpuCompat()
    layer.enter()
    assert torch.cuda.current_device() == "cpu"
    with pytest.raises(RuntimeError):
        layer.enter()
    layer.exit()
    for name, fn in originals.items():
        assert getattr(torch.cuda, name) is fn
    assert not layer.active


def test_refuses_untested_megatron_version(monkeypatch):
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", "9.9.9")
    monkeypatch.delenv("PREFIXRL_ALLOW_UNTESTED_MCORE", raising=False)
    with pytest.raises(RuntimeError, match="9.9.9"):
        CpuCompat().enter()
    assert not isinstance(torch.cuda.current_device, type(lambda: None)) or torch.cuda.current_device.__module__ != (
        "megatron_ext.compat"
    )
