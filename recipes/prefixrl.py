"""PrefixRL recipes: `<algo>_<model>_<size>_<N>n<G>g[_<variant>]` (CPU recipes: `<N>n<C>c`, C CPU ranks).

    cfg = get_recipe("prefixrl_llama31_70b_8n8g")()
    prefixrl launch prefixrl_llama31_70b_8n8g --executor slurm --dryrun cluster.partition=batch

GPU layouts were sized with `recipes.memory.estimate` for H100 80 GB (79 GiB usable) at the paper's lengths
(36,000-token sequences, 16,384 new tokens, n = 8); the numbers in the docstrings are GiB per GPU. Model paths
resolve under $PREFIXRL_MODELS (see `recipes._base.model_path`).
"""

from __future__ import annotations

from collections.abc import Callable

from prefixrl.config import TrainConfig
from recipes._base import _base, _fp8, model_path


def prefixrl_tiny_cpu_1n1c() -> TrainConfig:
    """Tiny Llama on the synthetic arithmetic task, one CPU process (Local executor)."""
    return _tiny(name="prefixrl_tiny_cpu_1n1c", ranks=1, tensor_parallel=1)


def prefixrl_tiny_cpu_1n2c() -> TrainConfig:
    """Tiny Llama on the synthetic arithmetic task over 2 CPU ranks (torchrun): Megatron TP=2, and one colocated
    vLLM engine with TP=2 whose shards live in the same two processes (vLLM's external_launcher backend)."""
    return _tiny(name="prefixrl_tiny_cpu_1n2c", ranks=2, tensor_parallel=2)


def prefixrl_qwen3_4b_1n8g() -> TrainConfig:
    """Qwen3-4B-Instruct-2507 (4.0B) on 8 H100: TP=2, DP=4; vLLM TP=2 (4 replicas).

    Trainer states 16.9 (weights 3.7, fp32 grads 7.5, Adam 5.6 with the distributed optimizer), activations 19.8,
    train peak 40.7 with the reserve. Engine: weights 3.7 + KV 2.5 per 36k sequence; 0.6 x 79 = 47 GiB holds the
    weights and about 17 full sequences next to the trainer states.
    """
    return _base(name="prefixrl_qwen3_4b_1n8g", model=model_path("Qwen3-4B-Instruct-2507"), num_nodes=1,
                 gpus_per_node=8, tensor_parallel=2, engine_tensor_parallel=2)  # fmt: skip


def prefixrl_llama31_8b_2n8g() -> TrainConfig:
    """Llama-3.1-8B-Instruct (8.0B; the paper distils it on OpenThoughtsV3 first) on 2 x 8 H100: TP=2, DP=8;
    vLLM TP=2 (8 replicas).

    Trainer states 28.0 (weights 7.5, grads 15.0, Adam 5.6), activations 19.6 (13 of it the 128k-vocab logits),
    train peak 51.7. Engine share 0.5 x 79 = 39.5 GiB: weights 7.5 + KV 2.2 per sequence, about 14 sequences;
    trainer states + engine share + reserve = 71.5.
    """
    return _base(name="prefixrl_llama31_8b_2n8g", model=model_path("Llama-3.1-8B-Instruct"), num_nodes=2,
                 gpus_per_node=8, tensor_parallel=2, engine_tensor_parallel=2,
                 overrides=["rollout.gpu_memory_utilization=0.5"])  # fmt: skip


def prefixrl_llama31_70b_8n8g() -> TrainConfig:
    """Llama-3.1-70B-Instruct (70.6B) on 8 x 8 H100: TP=8 within a node, PP=4 across nodes, DP=2; vLLM TP=8 (one
    replica per node).

    Trainer states 24.6 (weights 4.1, grads 8.2, Adam 12.3 sharded over DP=2), activations 9.9 (full recompute,
    sequence parallel, 4 micro-batches in flight), train peak 38.5. Engine share 0.6 x 79 = 47.4 GiB: weights 16.4
    + KV 1.4 per 36k sequence, about 22 sequences; trainer states + engine share + reserve = 76.0 <= 79. PP=2
    would need 37.0 of states and leave the engine too little; TP=4 x PP=8 doubles the activations.
    """
    return _base(name="prefixrl_llama31_70b_8n8g", model=model_path("Llama-3.1-70B-Instruct"), num_nodes=8,
                 gpus_per_node=8, tensor_parallel=8, pipeline_parallel=4, engine_tensor_parallel=8)  # fmt: skip


def prefixrl_qwen3_4b_1n8g_fp8() -> TrainConfig:
    """`prefixrl_qwen3_4b_1n8g` with FP8 GEMMs (Transformer Engine, hybrid); +1.9 GiB of FP8 weight copies."""
    return _fp8(prefixrl_qwen3_4b_1n8g())


def prefixrl_llama31_8b_2n8g_fp8() -> TrainConfig:
    """`prefixrl_llama31_8b_2n8g` with FP8 GEMMs (Transformer Engine, hybrid); +3.7 GiB of FP8 weight copies."""
    return _fp8(prefixrl_llama31_8b_2n8g())


def prefixrl_llama31_70b_8n8g_fp8() -> TrainConfig:
    """`prefixrl_llama31_70b_8n8g` with FP8 GEMMs (Transformer Engine, hybrid); +2.1 GiB of FP8 weight copies."""
    return _fp8(prefixrl_llama31_70b_8n8g())


def _tiny(*, name: str, ranks: int, tensor_parallel: int) -> TrainConfig:
    """CPU sizes: short arithmetic chains need ~100 new tokens; small batches keep a step at seconds. data.problems
    stays None: `prefixrl train` prepares the synthetic task (tokenizer, SFT'd tiny-llama base, traces) itself."""
    return _base(
        name=name, model="tiny-llama", num_nodes=1, gpus_per_node=ranks, tensor_parallel=tensor_parallel,
        engine_tensor_parallel=ranks, accelerator="cpu",
        overrides=[
            "steps=40", "data.verifier=arith", "optim.micro_batch_size=64",
            "rollout.prompts_per_step=16", "rollout.max_new_tokens=128", "rollout.max_model_len=256",
            "rollout.kv_cache_gib=1", "optim.lr=5e-5", "optim.warmup_steps=2", "optim.max_seq_len=256",
            "eval.every_steps=10", "eval.num_samples=8", "eval.max_new_tokens=128", "eval.num_problems=64",
            "checkpoint.every_steps=10",
        ],
    )  # fmt: skip


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f
    for f in (
        prefixrl_tiny_cpu_1n1c, prefixrl_tiny_cpu_1n2c, prefixrl_qwen3_4b_1n8g, prefixrl_llama31_8b_2n8g,
        prefixrl_llama31_70b_8n8g, prefixrl_qwen3_4b_1n8g_fp8, prefixrl_llama31_8b_2n8g_fp8,
        prefixrl_llama31_70b_8n8g_fp8,
    )
}  # fmt: skip
"""Recipe name -> function returning its TrainConfig."""


def get_recipe(name: str) -> Callable[[], TrainConfig]:
    """The recipe called `name`; ValueError listing every recipe otherwise."""
    if name not in RECIPES:
        import difflib

        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown recipe {name!r}{hint}; available recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
