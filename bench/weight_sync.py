"""Benchmark the engine's per-step weight sync against a plain memcpy, and its generation throughput.

For each model size: build a random 2-layer HF model (transformers, no downloads), start a `VLLMEngine` on it and
measure
- weight sync: seconds per `update_weights` of the full HF-named state (median of --steps), the bytes it moves,
  and the ratio to a plain `torch.Tensor.copy_` of the same tensors into preallocated buffers (target <= 3x);
- generation: tokens/s on fixed prompts, standalone (back-to-back calls) and in a loop that syncs before every
  call (the trainer's pattern; the in-loop comparison against the real trainer is the driver's job).

Each size runs in a child process with the default glibc allocator settings; "small" also runs with
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>` so freed memory is reused instead of handed back to the OS.
On CPU, vLLM's layer-wise reload materialises fresh tensors on every sync; with default glibc settings large
allocations are fresh mmaps, and first-touch page faults then cost more than the copies themselves. (vLLM's CPU
backend also repacks every linear weight into a oneDNN layout after loading; that part is inherent.)
The memcpy baselines: `memcpy` copies into preallocated, already-touched buffers; `clone` into fresh allocations.

Run: `HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python bench/weight_sync.py` (about 2 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_ext.spec import tiny_preset  # noqa: E402
from prefixrl.engine.vllm import VLLMEngine  # noqa: E402
from tests.helpers.engine_refs import load_state  # noqa: E402
from tests.helpers.hf_models import save_hf_model  # noqa: E402

SIZES = {
    "tiny": dict(num_layers=2),
    "small": dict(num_layers=2, vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_heads=16,
                  num_kv_heads=4, head_dim=64),
}
"""2-layer variants of tiny-llama: the test model (6 MB) and a wider one (~350 MB fp32) where bandwidth shows."""


MALLOC_REUSE = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
"""glibc settings that keep freed memory in the heap for reuse (read at process start)."""


def memcpy_seconds(state: dict[str, torch.Tensor], *, repeats: int) -> tuple[float, float]:
    """Best-of times to copy every tensor (a) into preallocated touched buffers, (b) into fresh ones (clone)."""
    dst = {k: torch.empty_like(v) for k, v in state.items()}
    best, best_clone = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k, v in state.items():
            dst[k].copy_(v)
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        clones = [v.clone() for v in state.values()]
        best_clone = min(best_clone, time.perf_counter() - t0)
        del clones
    return best, best_clone


def bench_size(name: str, root: Path, *, steps: int, gen_prompts: int, gen_tokens: int) -> dict[str, float]:
    spec = dataclasses.replace(tiny_preset("tiny-llama"), **SIZES[name])
    paths = [save_hf_model(spec, root / f"{name}{seed}", seed=seed) for seed in (0, 1)]
    states = [load_state(p) for p in paths]
    num_bytes = sum(t.numel() * t.element_size() for t in states[0].values())

    t0 = time.perf_counter()
    engine = VLLMEngine(paths[0], max_model_len=256, seed=0, kv_cache_gib=1)
    start_s = time.perf_counter() - t0
    prompts = [[2] + [(7 * i + j) % 500 + 10 for j in range(16)] for i in range(gen_prompts)]

    def generate() -> tuple[float, int]:
        t = time.perf_counter()
        out = engine.generate(prompts, n=1, max_tokens=gen_tokens, temperature=1.0, seed=0)
        return time.perf_counter() - t, sum(len(c.token_ids) for cs in out for c in cs)

    generate()  # warm-up (first calls are slow)
    generate()
    sync_s, validate_s, load_s = [], [], []
    for step in range(steps):
        t = time.perf_counter()
        stats = engine.update_weights(states[step % 2].items())
        sync_s.append(time.perf_counter() - t)
        validate_s.append(stats.validate_s)
        load_s.append(stats.load_s)
    standalone = [generate() for _ in range(2)]
    in_loop = []
    for step in range(2):
        engine.update_weights(states[step % 2].items())
        in_loop.append(generate())
    engine.shutdown()

    memcpy_s, clone_s = memcpy_seconds(states[0], repeats=5)
    sync_med = statistics.median(sync_s)

    def tok_s(runs: list[tuple[float, int]]) -> float:
        return sum(n for _, n in runs) / sum(s for s, _ in runs)

    return {
        "params_M": spec.num_params() / 1e6,
        "bytes_per_step_MB": num_bytes / 1e6,
        "engine_start_s": start_s,
        "sync_s": sync_med,
        "sync_validate_s": statistics.median(validate_s),
        "sync_load_s": statistics.median(load_s),
        "memcpy_s": memcpy_s,
        "clone_s": clone_s,
        "sync_over_memcpy": sync_med / memcpy_s,
        "sync_over_clone": sync_med / clone_s,
        "sync_GB_per_s": num_bytes / sync_med / 1e9,
        "memcpy_GB_per_s": num_bytes / memcpy_s / 1e9,
        "gen_tok_per_s_standalone": tok_s(standalone),
        "gen_tok_per_s_after_sync": tok_s(in_loop),
        "gen_tokens_per_call": float(standalone[0][1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=4, help="weight syncs timed per size")
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:  # one size, one allocator setting; prints one JSON line
        logging.getLogger("vllm").setLevel(logging.WARNING)
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            res = bench_size(args.child, Path(tmp), steps=args.steps, gen_prompts=args.gen_prompts,
                             gen_tokens=args.gen_tokens)
        print("RESULT " + json.dumps(res))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    results = {}
    for name in args.sizes:
        variants = (("default", {}), ("reuse", MALLOC_REUSE)) if name != "tiny" else (("default", {}),)
        for alloc, extra_env in variants:
            cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                   "--gen-prompts", str(args.gen_prompts), "--gen-tokens", str(args.gen_tokens)]
            proc = subprocess.run(cmd, env={**os.environ, **extra_env}, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise RuntimeError(f"benchmark child {name}/{alloc} failed:\n{proc.stderr[-3000:]}")
            results[f"{name}/{alloc}"] = json.loads(lines[-1].removeprefix("RESULT "))
    keys = list(next(iter(results.values())))
    print(f"\n{'metric':<26}" + "".join(f"{n:>15}" for n in results))
    for k in keys:
        print(f"{k:<26}" + "".join(f"{results[n][k]:>15.4g}" for n in results))


if __name__ == "__main__":
    main()
