"""`prefixrl convert` both ways through the real CLI: HF -> Megatron at TP=2 -> HF is bitwise the original."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.hf_models import save_hf_model, tiny_spec


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "prefixrl.cli", *args], capture_output=True, text=True, timeout=600)


def test_convert_roundtrip_tp2(tmp_path):
    src = save_hf_model(tiny_spec("qwen3", vocab_size=1000), tmp_path / "hf", seed=5)
    r = _cli("convert", "hf-to-megatron", str(src), str(tmp_path / "mcore"), "--tp", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli("convert", "megatron-to-hf", str(tmp_path / "mcore"), str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr[-3000:]
    original, back = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(original) == sorted(back)
    for name in original:
        assert torch.equal(original[name], back[name]), name
    # An existing destination is refused, and nothing is half-written.
    r = _cli("convert", "megatron-to-hf", str(tmp_path / "mcore"), str(tmp_path / "back"))
    assert r.returncode == 2 and "exists" in r.stderr
    r = _cli("convert", "hf-to-megatron", str(src), str(tmp_path / "bad"), "--tp", "3")
    assert r.returncode == 2 and "use one of [1, 2]" in r.stderr
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
