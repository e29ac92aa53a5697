"""Each CUDA-only call site the CPU compatibility layer patches fails without it and works with it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_ext.compat import CpuCompat, cpu_compat

REPO = Path(__file__).resolve().parents[2]

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


def _failures_in_fresh_process() -> dict[str, bool]:
    """Which call sites raise without the layer, in a fresh interpreter (other tests, e.g. an in-process vLLM engine,
    may have replaced torch.cuda attributes in this one)."""
    code = (
        "import json, tests.unit.test_compat as t\n"
        "out = {}\n"
        "for name, fn in t.CALL_SITES.items():\n"
        "    try:\n        fn(); out[name] = False\n"
        "    except Exception:\n        out[name] = True\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stderr[-2000:]
    return json.loads(line[0][len("RESULT"):])


@pytest.fixture(scope="module")
def fails_without_layer() -> dict[str, bool]:
    return _failures_in_fresh_process()


@pytest.mark.parametrize("site", sorted(CALL_SITES))
def test_call_site_fails_without_layer_and_works_with_it(site, fails_without_layer):
    assert fails_without_layer[site], f"{site} works without the compatibility layer: the patch is not needed"
    fn = CALL_SITES[site]
    with cpu_compat():
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
    with pytest.raises(Exception):  # the refused layer left nothing patched behind
        torch.cuda.current_device()
