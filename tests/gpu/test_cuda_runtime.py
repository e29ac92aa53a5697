"""runtime.initialize on CUDA: nccl, CUDA RNG seeding, the CPU compatibility layer never entered, clean shutdown."""

import pytest
import torch
import torch.distributed as dist

from megatron_ext import compat, runtime

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _patchable_call_sites() -> dict[str, object]:
    """Everything megatron_ext.compat would replace, as it is now."""
    from megatron.core.tensor_parallel import random as mcore_random

    sites: dict[str, object] = {f"torch.cuda.{n}": getattr(torch.cuda, n) for n in compat._cuda_replacements()}
    sites["mcore._get_cuda_rng_state"] = mcore_random._get_cuda_rng_state
    sites["mcore._set_cuda_rng_state"] = mcore_random._set_cuda_rng_state
    sites["torch.cuda.nvtx._nvtx"] = getattr(torch.cuda.nvtx, "_nvtx", None)
    return sites


def test_initialize_uses_nccl_and_leaves_cuda_alone_twice_in_a_row():
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    before = _patchable_call_sites()
    for _ in range(2):  # every GPU test module initialises and shuts down again in the same process
        runtime.initialize(seed=0)
        try:
            assert dist.get_backend() == "nccl"
            now = _patchable_call_sites()
            patched = [name for name, fn in before.items() if now[name] is not fn]
            assert not patched, f"the CPU compatibility layer was entered on a GPU machine: {patched}"
            assert isinstance(torch.cuda.current_device(), int)
            # No CUDA -> CPU TorchFunctionMode is active: placements stay on the GPU.
            assert torch.zeros(2, device="cuda").is_cuda and torch.ones(2).cuda().is_cuda
            assert torch.ones(2).to("cuda").is_cuda
            assert parallel_state.get_tensor_model_parallel_world_size() == 1
            assert parallel_state.get_pipeline_model_parallel_world_size() == 1
            x = torch.full((4,), 2.0, device="cuda")
            dist.all_reduce(x, group=parallel_state.get_data_parallel_group())  # one real NCCL collective
            assert x.is_cuda and x.tolist() == [2.0] * 4
            # Seeding reached the CUDA generator; megatron's tracker forks a different, seeded CUDA stream.
            a = torch.randn(8, device="cuda")
            runtime.seed_all(0)
            b = torch.randn(8, device="cuda")
            with get_cuda_rng_tracker().fork():
                c = torch.randn(8, device="cuda")
            assert torch.equal(a, b) and not torch.equal(a, c)
        finally:
            runtime.shutdown()
        assert not runtime.is_initialized() and not dist.is_initialized()
        assert not parallel_state.model_parallel_is_initialized()
        after = _patchable_call_sites()
        assert all(after[name] is fn for name, fn in before.items())
