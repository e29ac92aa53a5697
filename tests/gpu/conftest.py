"""Fixtures of the GPU tier: a one-process Megatron world per test module (nccl on CUDA) and its device.

Every test module here also carries `pytestmark = [pytest.mark.gpu, pytest.mark.skipif(no CUDA)]`, so without a GPU
the whole tier reports as skipped. Run: `make test-gpu`, or on a GPU node `bash bench/gpu_check.sh` (docs/gpu.md).
"""

import pytest
import torch

from megatron_ext import runtime


@pytest.fixture(scope="module")
def megatron_cuda():
    """TP=1, PP=1 in this process; torn down (process group included) when the module's tests are done."""
    runtime.initialize(seed=0)
    yield
    runtime.shutdown()


@pytest.fixture
def device(megatron_cuda) -> torch.device:
    """The device megatron_ext places tensors on (the current CUDA device)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
