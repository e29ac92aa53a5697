"""Training throughput of an 8B-shape Llama slice on one GPU: forward+backward tokens/s, MFU and peak memory, then
full MegatronPolicy train steps (Float16Module + DDP + distributed optimizer + Adam) on the same weights.

Shape: Llama-3.1-8B (../shared/data/model_configs/Meta-Llama-3.1-8B/config.json when readable, else the same numbers
built in) cut to 4 layers: hidden 4096, ffn 14336, 32 query / 8 KV heads, vocab 128256, llama3 RoPE. bf16 params,
Megatron's local layer spec (no Transformer Engine), micro-batch 1 x 4096 tokens, random weights.

The forward+backward loop is the policy's model path without DDP or the optimizer: the GPTModel in a Float16Module,
vocab-parallel log-probs (megatron_ext.logprobs) of the next tokens, backward of their mean.

MFU = 6 * N * tokens / seconds / peak, with N the parameters that take part in matmuls (every layer and the LM head;
not the input embedding table). Attention-score FLOPs are not in 6N; a second figure adds PaLM's 12 * layers *
(heads * head_dim) * seq per token. Peak: 989e12 dense bf16 FLOP/s, the H100 SXM figure, which the H200 shares
(same compute, more memory); other GPUs are measured against the same number.

Run: `python3 bench/gpu_throughput.py [--json OUT.json]` on a GPU (about a minute on an H100, most of it the CPU
initialisation of 1.9 B weights). `--tiny` uses tiny shapes and also runs on the CPU under megatron_ext.runtime's
CPU compatibility layer (`.venv/bin/python bench/gpu_throughput.py --tiny`, a few seconds); no MFU there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ext import models, runtime  # noqa: E402
from megatron_ext.spec import ModelSpec, tiny_preset  # noqa: E402
from recipes.memory import trainer_states_gib  # noqa: E402

LLAMA31_8B_CONFIG = REPO.parent / "shared" / "data" / "model_configs" / "Meta-Llama-3.1-8B" / "config.json"
LLAMA31_8B = ModelSpec(
    architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
    num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
    max_position_embeddings=131072, torch_dtype="bfloat16",
)
"""Meta-Llama-3.1-8B's config.json, for machines without ../shared/data."""
PEAK_BF16_FLOPS = 989e12
"""Dense bf16 peak of an H100 SXM (and H200), FLOP/s."""
BF16 = models.PrecisionConfig(dtype="bfloat16")


@dataclasses.dataclass(kw_only=True, frozen=True)
class Shape:
    """What one benchmark run measures."""

    spec: ModelSpec
    source: str
    """Where the architecture came from."""
    seq_len: int
    """Tokens per sequence (micro-batch size is 1)."""
    warmup: int
    """Untimed forward+backward steps."""
    steps: int
    """Timed forward+backward steps."""
    policy_seqs: int
    """Sequences per policy train step (one micro-batch each)."""
    policy_steps: int
    """Timed policy train steps (after one untimed)."""


def shape(*, tiny: bool) -> Shape:
    if tiny:
        return Shape(spec=dataclasses.replace(tiny_preset("tiny-llama"), num_layers=2), source="tiny-llama preset",
                     seq_len=128, warmup=1, steps=3, policy_seqs=2, policy_steps=2)
    if LLAMA31_8B_CONFIG.is_file():
        spec, source = ModelSpec.from_pretrained(LLAMA31_8B_CONFIG), str(LLAMA31_8B_CONFIG)
    else:
        spec, source = LLAMA31_8B, "built-in Meta-Llama-3.1-8B numbers"
    return Shape(spec=dataclasses.replace(spec, num_layers=4), source=source, seq_len=4096, warmup=3, steps=10,
                 policy_seqs=2, policy_steps=3)


def matmul_params(spec: ModelSpec) -> int:
    """Parameters that take part in matmuls: every layer, the final norm and the LM head (not the input table)."""
    return spec.num_params(include_embeddings=False) + spec.vocab_size * spec.hidden_size


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _rates(s: Shape, *, tokens: int, seconds: float) -> dict[str, float | None]:
    tok_s = tokens / seconds
    flops_6n = 6 * matmul_params(s.spec) * tok_s
    attn = 12 * s.spec.num_layers * s.spec.num_heads * s.spec.head_dim * s.seq_len * tok_s
    on_gpu = torch.cuda.is_available()
    return {"tokens_per_s": tok_s, "mfu_6n": flops_6n / PEAK_BF16_FLOPS if on_gpu else None,
            "mfu_6n_attn": (flops_6n + attn) / PEAK_BF16_FLOPS if on_gpu else None, "peak_mem_gib": _peak_gib()}


def forward_backward(s: Shape, chunks: list[torch.nn.Module]) -> dict[str, float | None]:
    """Timed forward+backward steps of the bf16 model at micro-batch 1 x seq_len."""
    from megatron.core.transformer.module import Float16Module

    from megatron_ext.logprobs import vocab_parallel_logprobs

    model = Float16Module(models.unwrap(chunks[0]).config, chunks[0])
    model.train()
    device = next(model.parameters()).device
    ids_BT = torch.randint(0, s.spec.vocab_size, (1, s.seq_len), generator=torch.Generator().manual_seed(0))
    labels_BT = torch.roll(ids_BT, -1, dims=1).to(device)
    ids_BT = ids_BT.to(device)
    pos_BT = torch.arange(s.seq_len, device=device)[None]
    mask = models.causal_mask(s.seq_len).to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits_BTV = model(ids_BT, pos_BT, mask)
        logprobs_BT = vocab_parallel_logprobs(logits_BTV, labels_BT, vocab_size=s.spec.vocab_size)
        (-logprobs_BT.mean()).backward()

    for _ in range(s.warmup):
        step()
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(s.steps):
        step()
    _sync()
    seconds = (time.perf_counter() - t0) / s.steps
    model.zero_grad(set_to_none=True)
    return {"seconds_per_step": seconds, **_rates(s, tokens=s.seq_len, seconds=seconds)}


def policy_steps(s: Shape, chunks: list[torch.nn.Module]) -> dict[str, float | None]:
    """Timed MegatronPolicy.train_step on `chunks` (REINFORCE; 1/4 of each sequence is prompt, 3/4 completion)."""
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from prefixrl.batching import RLBatch

    before_policy = _allocated_gib()  # the slice's bf16 weights
    # PolicyConfig.model names an HF directory or a tiny preset; hand the policy the already built random slice.
    with mock.patch.object(models, "from_hf", lambda path, *, precision=None: chunks):
        policy = MegatronPolicy(PolicyConfig(model="8b-slice", precision=BF16, micro_batch_size=1,
                                             max_seq_len=s.seq_len, optim=OptimizerSettings(lr=1e-6, warmup_steps=0)))
    after_init = _allocated_gib()  # + DDP's fp32 gradient buffer and the distributed optimizer's fp32 main params
    g = torch.Generator().manual_seed(1)
    prompt = s.seq_len // 4
    rows = [torch.randint(4, s.spec.vocab_size, (s.seq_len,), generator=g).tolist() for _ in range(s.policy_seqs)]
    batch = RLBatch.from_lists([r[:prompt] for r in rows], [r[prompt:] for r in rows],
                               torch.randn(s.policy_seqs, generator=g).tolist())
    metrics = policy.train_step(batch)
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(s.policy_steps):
        metrics = policy.train_step(batch)
    _sync()
    seconds = (time.perf_counter() - t0) / s.policy_steps
    tokens = s.policy_seqs * s.seq_len
    # What stays allocated between steps is the trainer's states; recipes.memory plans them per parameter.
    resident = _allocated_gib()
    planned = trainer_states_gib(s.spec.num_params(), dtype="bfloat16", fp8=False, model_parallel=1,
                                 optimizer_shard=1)
    return {"seconds_per_step": seconds, "loss": metrics["loss/total"], "grad_norm": metrics["policy/grad_norm"],
            "resident_gib": resident, "planned_states_gib": sum(planned),
            "planned_weights_grads_optimizer_gib": list(planned),
            "allocated_gib_before_policy_after_init_after_steps": [before_policy, after_init, resident],
            "largest_storages": _census(), **_rates(s, tokens=tokens, seconds=seconds)}


def _allocated_gib() -> float | None:
    return torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _census(top: int = 10) -> list[dict[str, object]]:
    """The `top` largest tensor storages reachable from Python (each storage once, with the shape and dtype of one
    tensor on it), after a first row with their number and their total GiB per device: what the resident memory is
    made of."""
    import gc

    storages: dict[tuple[str, int], dict[str, object]] = {}
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type == "meta":
                continue
            st = obj.untyped_storage()
        except Exception:  # objects that raise on isinstance or have no storage (sparse, functional wrappers)
            continue
        key = (str(obj.device), st.data_ptr())
        if key not in storages or obj.numel() > storages[key]["numel"]:
            storages[key] = {"gib": st.nbytes() / 2**30, "shape": list(obj.shape), "dtype": str(obj.dtype),
                             "numel": obj.numel(), "device": str(obj.device)}
    ranked = sorted(storages.values(), key=lambda d: -float(d["gib"]))  # type: ignore[arg-type]
    totals: dict[str, float] = {}
    for d in ranked:
        totals[str(d["device"])] = totals.get(str(d["device"]), 0.0) + float(d["gib"])  # type: ignore[arg-type]
    return [{"storages": len(ranked), "total_gib_by_device": totals}] + ranked[:top]


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _report(name: str, r: dict[str, float | None]) -> None:
    print(f"{name}: {_fmt(r['tokens_per_s'], ',.0f')} tokens/s, {_fmt(r['seconds_per_step'], '.4f')} s/step, "
          f"MFU(6N) {_fmt(r['mfu_6n'], '.1%')}, MFU(6N+attn) {_fmt(r['mfu_6n_attn'], '.1%')}, "
          f"peak memory {_fmt(r['peak_mem_gib'], '.1f')} GiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (runs on the CPU too)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    s = shape(tiny=args.tiny)
    from megatron.core import package_info

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA)"
    print(f"device: {device}; torch {torch.__version__}, megatron-core {package_info.__version__}")
    print(f"model: {s.spec.num_layers}-layer slice of {s.source}: hidden {s.spec.hidden_size}, ffn "
          f"{s.spec.intermediate_size}, heads {s.spec.num_heads}/{s.spec.num_kv_heads}, vocab {s.spec.vocab_size}; "
          f"{s.spec.num_params() / 1e9:.3f} B params, N(matmul) {matmul_params(s.spec) / 1e9:.3f} B; bf16, local "
          f"spec; micro-batch 1 x {s.seq_len}; MFU against {PEAK_BF16_FLOPS:.3g} FLOP/s (H100/H200 dense bf16)",
          flush=True)
    results: dict[str, object] = {"device": device, "torch": torch.__version__, "seq_len": s.seq_len,
                                  "spec": s.spec.to_hf_config(), "peak_flops": PEAK_BF16_FLOPS}
    runtime.initialize(seed=0)
    try:
        t0 = time.perf_counter()
        scratch = models.build(s.spec, precision=BF16, for_loading=True)  # what from_hf builds before loading
        results["build_for_loading_seconds"] = time.perf_counter() - t0
        del scratch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        chunks = models.build(s.spec, precision=BF16)
        results["build_seconds"] = time.perf_counter() - t0
        print(f"built in {results['build_seconds']:.1f} s (random weights: CPU initialisation, then copied to the "
              f"device); for loading (from_hf: drawn on the GPU) in {results['build_for_loading_seconds']:.1f} s",
              flush=True)
        results["forward_backward"] = fb = forward_backward(s, chunks)
        _report(f"forward+backward ({s.steps} steps after {s.warmup} warm-up)", fb)
        results["policy_train_step"] = ps = policy_steps(s, chunks)
        _report(f"policy train step ({s.policy_seqs} x {s.seq_len} tokens, {s.policy_steps} steps after 1 warm-up)",
                ps)
        print(f"resident between policy steps {_fmt(ps['resident_gib'], '.2f')} GiB; recipes.memory's trainer "
              f"states (bf16 weights, fp32 grads, Adam + fp32 main params, TP=PP=DP=1) {ps['planned_states_gib']:.2f} "
              "GiB", flush=True)
        w, gr, opt = ps["planned_weights_grads_optimizer_gib"]
        print(f"allocated GiB before the policy / after its init / after its steps: "
              f"{ps['allocated_gib_before_policy_after_init_after_steps']}; planned weights {w:.2f}, grads {gr:.2f}, "
              f"optimizer {opt:.2f}", flush=True)
        for row in ps["largest_storages"]:
            print("  storage:", row, flush=True)
    finally:
        runtime.shutdown()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
