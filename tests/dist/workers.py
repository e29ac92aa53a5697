"""Worker functions run on 2 ranks by tests/helpers/distributed.run_workers (torchrun, gloo on CPU).

Each function asserts on its own rank; a failure exits non-zero and fails the calling test with the output.
Usage: python -m torch.distributed.run --nproc-per-node 2 -m tests.dist.workers FUNC '{"kwarg": ...}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_ext import convert, models, runtime
from tests.helpers.hf_models import hf_logits, save_hf_model, tiny_spec


def _shared_hf_model(family: str, root: Path, **overrides) -> Path:
    path = root / f"hf-{family}"
    if dist.get_rank() == 0:
        save_hf_model(tiny_spec(family, **overrides), path, seed=1)
    dist.barrier()
    return path


def parity_and_roundtrip(*, tp: int, pp: int, families: list[str], tmp: str) -> None:
    """Logits equal HF's (1e-5, fp32) at this layout; export is bitwise the HF checkpoint; re-import is bitwise."""
    from safetensors.torch import load_file

    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, pipeline_parallel=pp, seed=0)
    try:
        for family in families:
            path = _shared_hf_model(family, root, vocab_size=1000)  # 1000 -> padded vocab exercises trimming
            ids = torch.randint(0, 1000, (2, 19), generator=torch.Generator().manual_seed(0))
            chunks = models.from_hf(path)
            out = models.logits(chunks, ids)
            if out is not None:
                ref = hf_logits(path, ids)
                err = (out - ref).abs().max().item()
                assert out.shape == ref.shape, (family, out.shape, ref.shape)
                assert err < 1e-5, f"{family} tp={tp} pp={pp}: max |logits - HF| = {err}"
                print(f"PARITY {family} tp={tp} pp={pp} max_abs_err={err:.2e}")
            original = load_file(str(path / "model.safetensors"))
            exported = {}
            for name, tensor in convert.export_hf(chunks):
                assert name not in exported, f"{name} exported twice"
                exported[name] = tensor.clone()
            assert sorted(exported) == sorted(original), set(exported) ^ set(original)
            for name, tensor in original.items():
                assert torch.equal(exported[name], tensor), f"{family}: export of {name} is not bitwise equal"
            out_dir = root / f"export-{family}-tp{tp}pp{pp}"
            spec = models.spec_of(chunks)
            convert.save_hf_checkpoint(convert.export_hf(chunks), spec, out_dir, write=dist.get_rank() == 0)
            dist.barrier()
            reloaded = models.from_hf(out_dir)
            for (n1, p1), (n2, p2) in zip(convert.global_named_parameters(chunks[0]),
                                          convert.global_named_parameters(reloaded[0])):
                assert n1 == n2 and torch.equal(p1, p2), f"re-import of {n1} is not bitwise equal"
            print(f"ROUNDTRIP {family} tp={tp} pp={pp} ok ({len(exported)} tensors)")
    finally:
        runtime.shutdown()


def save_megatron_checkpoint_at(*, tmp: str, family: str, tp: int) -> None:
    """Load the shared HF model at TP=tp, save a Megatron dist checkpoint and the reference logits."""
    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, seed=0)
    try:
        path = _shared_hf_model(family, root, vocab_size=1000)
        chunks = models.from_hf(path)
        ids = torch.randint(0, 1000, (2, 11), generator=torch.Generator().manual_seed(1))
        ref = models.logits(chunks, ids)
        convert.save_megatron_checkpoint(chunks, root / f"mcore-tp{tp}")
        if dist.get_rank() == 0:
            torch.save({"ids": ids, "logits": ref}, root / f"ref-tp{tp}.pt")
    finally:
        runtime.shutdown()


def load_megatron_checkpoint_at(*, tmp: str, src_tp: int, tp: int) -> None:
    """A Megatron dist checkpoint saved at TP=src_tp loads at TP=tp with the same logits (reshards)."""
    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, seed=0)
    try:
        chunks = convert.load_megatron_checkpoint(root / f"mcore-tp{src_tp}")
        ref = torch.load(root / f"ref-tp{src_tp}.pt")
        out = models.logits(chunks, ref["ids"])
        err = (out - ref["logits"]).abs().max().item()
        assert err < 1e-5, f"TP{src_tp} -> TP{tp} checkpoint logits differ by {err}"
        print(f"RESHARD tp{src_tp}->tp{tp} max_abs_err={err:.2e}")
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    import faulthandler
    import os

    # A hung collective dumps every thread's stack and exits instead of eating the test's whole timeout.
    faulthandler.dump_traceback_later(int(os.environ.get("PREFIXRL_WORKER_TIMEOUT", "300")), exit=True)
    func, kwargs = sys.argv[1], json.loads(sys.argv[2])
    globals()[func](**kwargs)
