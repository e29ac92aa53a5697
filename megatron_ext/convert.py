"""HF <-> Megatron weights: load HF safetensors into this rank's chunks, export HF-named full tensors as a stream.

Layout rules (local and Transformer Engine layer specs):
- fused QKV, per KV group: for each group g, the q heads of g, then k_g, then v_g (rows); a TP rank holds whole groups;
- fused fc1 = [gate; up] by rows; TP rank i holds [gate_i; up_i];
- row-parallel linear_proj / linear_fc2 split by columns; embeddings / output layer split by (padded) vocab rows;
- norms replicated; the TE spec fuses the pre-attention / pre-MLP norm weights into linear_qkv / linear_fc1;
- tied embeddings: the output layer (present on the last PP stage when PP > 1) loads from embed_tokens, and the
  export emits no lm_head.

`export_hf` is a collective: every rank yields every tensor of the HF checkpoint once, full and under its HF name,
gathered over TP and broadcast from the owning PP stage one parameter at a time (bounded memory: one full
parameter beyond the model itself). The manifest is rebuilt on every call; nothing is cached across syncs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from megatron_ext import runtime
from megatron_ext.spec import ModelSpec

Split = Literal["replicated", "cols", "vocab", "gate_up", "qkv"]

_LAYER_RULES: dict[str, tuple[tuple[str, ...], Split]] = {
    "input_layernorm.weight": (("input_layernorm.weight",), "replicated"),
    "self_attention.linear_qkv.layer_norm_weight": (("input_layernorm.weight",), "replicated"),
    "self_attention.linear_qkv.weight": (
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "qkv"),
    "self_attention.linear_qkv.bias": (
        ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), "qkv"),
    "self_attention.q_layernorm.weight": (("self_attn.q_norm.weight",), "replicated"),
    "self_attention.k_layernorm.weight": (("self_attn.k_norm.weight",), "replicated"),
    "self_attention.linear_proj.weight": (("self_attn.o_proj.weight",), "cols"),
    "pre_mlp_layernorm.weight": (("post_attention_layernorm.weight",), "replicated"),
    "mlp.linear_fc1.layer_norm_weight": (("post_attention_layernorm.weight",), "replicated"),
    "mlp.linear_fc1.weight": (("mlp.gate_proj.weight", "mlp.up_proj.weight"), "gate_up"),
    "mlp.linear_fc2.weight": (("mlp.down_proj.weight",), "cols"),
}
_GLOBAL_RULES: dict[str, tuple[tuple[str, ...], Split]] = {
    "embedding.word_embeddings.weight": (("model.embed_tokens.weight",), "vocab"),
    "decoder.final_layernorm.weight": (("model.norm.weight",), "replicated"),
    "output_layer.weight": (("lm_head.weight",), "vocab"),
}
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_IGNORED_HF = re.compile(r"rotary_emb\.inv_freq$")


@dataclass(frozen=True, slots=True)
class TensorRule:
    """How one Megatron parameter maps to HF tensors."""

    megatron_name: str
    """Megatron name with the *global* layer index."""
    hf_names: tuple[str, ...]
    """HF tensor names, in fusion order."""
    split: Split
    """How the tensor is split over TP ranks and fused from HF tensors."""


def rule_for(megatron_name: str, spec: ModelSpec) -> TensorRule:
    """The rule for a Megatron parameter name (global layer index)."""
    m = _LAYER_RE.match(megatron_name)
    if m:
        layer, suffix = m.groups()
        if suffix not in _LAYER_RULES:
            raise KeyError(f"no HF mapping for Megatron parameter {megatron_name!r}")
        names, split = _LAYER_RULES[suffix]
        return TensorRule(megatron_name, tuple(f"model.layers.{layer}.{n}" for n in names), split)
    if megatron_name not in _GLOBAL_RULES:
        raise KeyError(f"no HF mapping for Megatron parameter {megatron_name!r}")
    names, split = _GLOBAL_RULES[megatron_name]
    if megatron_name == "output_layer.weight" and spec.tie_word_embeddings:
        names = ("model.embed_tokens.weight",)
    return TensorRule(megatron_name, names, split)


def expected_hf_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor an HF checkpoint of this architecture holds, with its full shape."""
    h, v, i, d = spec.hidden_size, spec.vocab_size, spec.intermediate_size, spec.head_dim
    q, kv = spec.num_heads * d, spec.num_kv_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    per_layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (i, h), "mlp.up_proj.weight": (i, h), "mlp.down_proj.weight": (h, i),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
    }
    if spec.qkv_bias:
        per_layer |= {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
    if spec.qk_norm:
        per_layer |= {"self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,)}
    for layer in range(spec.num_layers):
        shapes |= {f"model.layers.{layer}.{name}": shape for name, shape in per_layer.items()}
    return shapes


def expected_hf_names(spec: ModelSpec) -> list[str]:
    """Every tensor name an HF checkpoint of this architecture holds."""
    return list(expected_hf_shapes(spec))


# ---------------------------------------------------------------------------------------------------- HF reading
class HFCheckpoint:
    """Lazy reader of an HF safetensors checkpoint (single file or sharded with model.safetensors.index.json)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif single.exists():
            weight_map = {}
            with safe_open(single, framework="pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {self.path}")
        self.weight_map = weight_map
        self._open: dict[str, Any] = {}
        self._safe_open = safe_open

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def _file(self, name: str) -> Any:
        fname = self.weight_map[name]
        if fname not in self._open:
            self._open[fname] = self._safe_open(self.path / fname, framework="pt")
        return self._open[fname]

    def shape(self, name: str) -> list[int]:
        return list(self._file(name).get_slice(name).get_shape())

    def rows(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of a tensor (all of it by default), reading only those bytes."""
        sl = self._file(name).get_slice(name)
        return sl[start:stop] if (start is not None or stop is not None) else sl[:]

    def cols(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._file(name).get_slice(name)[:, start:stop]


def check_hf_names(ckpt: HFCheckpoint, spec: ModelSpec) -> None:
    """Fail with the lists of missing and unexpected tensors before anything is loaded."""
    have = {k for k in ckpt.keys() if not _IGNORED_HF.search(k)}
    if spec.tie_word_embeddings:
        have.discard("lm_head.weight")  # some tied checkpoints store a redundant copy
    want = expected_hf_shapes(spec)
    missing, unexpected = sorted(set(want) - have), sorted(have - set(want))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {ckpt.path} does not match its config ({spec.architecture}, {spec.num_layers} layers): "
            f"missing {len(missing)} tensors {missing[:20]}{' ...' if len(missing) > 20 else ''}; "
            f"unexpected {len(unexpected)} tensors {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}"
        )
    wrong = [(n, tuple(ckpt.shape(n)), s) for n, s in want.items() if tuple(ckpt.shape(n)) != s]
    if wrong:
        listing = "; ".join(f"{n}: checkpoint {a}, config expects {b}" for n, a, b in wrong[:10])
        raise ValueError(f"checkpoint {ckpt.path} has {len(wrong)} tensors whose shapes do not match config.json "
                         f"(is config.json from a different model?): {listing}")


def _shard_from_hf(rule: TensorRule, ckpt: HFCheckpoint, spec: ModelSpec, *, rank: int, size: int,
                   local_shape: torch.Size) -> torch.Tensor:
    """Read this TP rank's shard of one Megatron parameter from the HF checkpoint."""
    if rule.split == "replicated":
        return ckpt.rows(rule.hf_names[0])
    if rule.split == "cols":
        n = ckpt.shape(rule.hf_names[0])[1] // size
        return ckpt.cols(rule.hf_names[0], rank * n, (rank + 1) * n)
    if rule.split == "vocab":
        rows_per_rank = local_shape[0]
        start, stop = rank * rows_per_rank, min((rank + 1) * rows_per_rank, spec.vocab_size)
        out = torch.zeros(local_shape, dtype=torch.float32)
        if stop > start:
            out[: stop - start] = ckpt.rows(rule.hf_names[0], start, stop).float()
        return out
    if rule.split == "gate_up":
        n = spec.intermediate_size // size
        return torch.cat([ckpt.rows(name, rank * n, (rank + 1) * n) for name in rule.hf_names], dim=0)
    # qkv: whole KV groups per rank, interleaved [q_g, k_g, v_g] per group.
    groups = spec.num_kv_heads // size
    q_per_group = spec.num_heads // spec.num_kv_heads
    d = spec.head_dim
    q = ckpt.rows(rule.hf_names[0], rank * groups * q_per_group * d, (rank + 1) * groups * q_per_group * d)
    k = ckpt.rows(rule.hf_names[1], rank * groups * d, (rank + 1) * groups * d)
    v = ckpt.rows(rule.hf_names[2], rank * groups * d, (rank + 1) * groups * d)
    rest = q.shape[1:]
    fused = torch.cat([q.reshape(groups, q_per_group * d, *rest), k.reshape(groups, d, *rest),
                       v.reshape(groups, d, *rest)], dim=1)
    return fused.reshape(-1, *rest)


def _hf_from_shards(rule: TensorRule, shards: list[torch.Tensor], spec: ModelSpec) -> list[tuple[str, torch.Tensor]]:
    """Undo the TP split and the fusion: full HF tensors from all TP ranks' shards (in rank order)."""
    if rule.split == "replicated":
        return [(rule.hf_names[0], shards[0])]
    if rule.split == "cols":
        return [(rule.hf_names[0], torch.cat(shards, dim=1))]
    if rule.split == "vocab":
        return [(rule.hf_names[0], torch.cat(shards, dim=0)[: spec.vocab_size])]
    if rule.split == "gate_up":
        halves = [s.chunk(2, dim=0) for s in shards]
        return [(rule.hf_names[0], torch.cat([h[0] for h in halves])),
                (rule.hf_names[1], torch.cat([h[1] for h in halves]))]
    q_per_group, d = spec.num_heads // spec.num_kv_heads, spec.head_dim
    full = torch.cat(shards, dim=0)
    rest = full.shape[1:]
    grouped = full.reshape(spec.num_kv_heads, q_per_group + 2, d, *rest)
    q = grouped[:, :q_per_group].reshape(-1, *rest)
    k = grouped[:, q_per_group].reshape(-1, *rest)
    v = grouped[:, q_per_group + 1].reshape(-1, *rest)
    return list(zip(rule.hf_names, (q.contiguous(), k.contiguous(), v.contiguous())))


# ---------------------------------------------------------------------------------------------------- Megatron side
def global_named_parameters(chunk: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name with the global layer index, parameter) for a GPTModel chunk (wrappers are stripped)."""
    from megatron_ext.models import unwrap

    model = unwrap(chunk)
    for name, param in model.named_parameters():
        m = _LAYER_RE.match(name)
        if m:
            local, suffix = m.groups()
            layer = model.decoder.layers[int(local)].layer_number - 1  # layer_number is global and 1-based
            name = f"decoder.layers.{layer}.{suffix}"
        yield name, param


def load_hf_into(chunks: list[torch.nn.Module], path: str | os.PathLike) -> None:
    """Load HF weights into this rank's chunks; each rank reads only the slices it holds."""
    from megatron.core import parallel_state

    from megatron_ext.models import spec_of

    spec = spec_of(chunks)
    ckpt = HFCheckpoint(path)
    check_hf_names(ckpt, spec)
    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_world_size()
    with torch.no_grad():
        for chunk in chunks:
            for name, param in global_named_parameters(chunk):
                shard = _shard_from_hf(rule_for(name, spec), ckpt, spec, rank=rank, size=size,
                                       local_shape=param.shape)
                if shard.shape != param.shape:
                    raise ValueError(f"{name}: checkpoint gives shape {tuple(shard.shape)} for this rank, the model "
                                     f"expects {tuple(param.shape)}; is config.json from a different model?")
                param.copy_(shard.to(param.dtype))


def _manifest(chunks: list[torch.nn.Module], spec: ModelSpec, *,
              gradients: bool = False) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """Per PP stage, the ordered (global name, local shape, dtype) of the parameters it exports."""
    from megatron.core import parallel_state

    local = [
        (name, tuple(p.shape), str(p.main_grad.dtype if gradients else p.dtype).removeprefix("torch."))
        for chunk in chunks
        for name, p in global_named_parameters(chunk)
        if not (name == "output_layer.weight" and spec.tie_word_embeddings)
    ]
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return [local]
    stages: list[Any] = [None] * pp
    dist.all_gather_object(stages, local, group=parallel_state.get_pipeline_model_parallel_group())
    return stages


def export_hf(chunks: list[torch.nn.Module], *, gradients: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Collective: yield every HF tensor (full, HF name, unpadded) on every rank, one parameter at a time.

    All ranks of the model-parallel group must iterate the stream to the end together. With gradients=True the
    stream carries each parameter's Megatron DDP `main_grad` instead (for gradient-parity tests; valid when the
    gradients were all-reduced, i.e. without the distributed optimizer or at DP=1).
    """
    from megatron.core import parallel_state

    from megatron_ext.models import spec_of

    spec = spec_of(chunks)
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    my_stage = parallel_state.get_pipeline_model_parallel_rank()
    params = {name: p for chunk in chunks for name, p in global_named_parameters(chunk)}
    device = runtime.device()
    for stage, entries in enumerate(_manifest(chunks, spec, gradients=gradients)):
        for name, shape, dtype_name in entries:
            rule = rule_for(name, spec)
            n_shards = 1 if rule.split == "replicated" else tp
            if stage == my_stage:
                local = (params[name].main_grad if gradients else params[name]).detach().contiguous()
                if n_shards == 1:
                    stacked = local.unsqueeze(0)
                else:
                    shards = [torch.empty_like(local) for _ in range(tp)]
                    dist.all_gather(shards, local, group=tp_group)
                    stacked = torch.stack(shards)
            else:
                stacked = torch.empty((n_shards, *shape), dtype=getattr(torch, dtype_name), device=device)
            if len(_stage_ranks(pp_group)) > 1:
                dist.broadcast(stacked, src=_stage_ranks(pp_group)[stage], group=pp_group)
            yield from _hf_from_shards(rule, list(stacked.unbind(0)), spec)


def _stage_ranks(pp_group: Any) -> list[int]:
    return dist.get_process_group_ranks(pp_group)


# ---------------------------------------------------------------------------------------------------- writing
def _atomic_dir(dst: Path, *, overwrite: bool) -> Path:
    """A fresh temp dir beside dst (renamed into place by _commit_dir); refuses an existing dst unless overwrite."""
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; choose a new destination or pass --overwrite")
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _commit_dir(tmp: Path, dst: Path) -> None:
    import shutil

    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)


def save_hf_checkpoint(named_tensors: Iterator[tuple[str, torch.Tensor]], spec: ModelSpec, dst: str | os.PathLike,
                       *, write: bool = True, overwrite: bool = False, max_shard_bytes: int = 2 << 30,
                       extra_files: dict[str, str] | None = None) -> None:
    """Write an HF checkpoint (config.json + safetensors shards + index) from a tensor stream, atomically.

    Only the rank with write=True writes; every rank must still consume the stream (it is a collective).
    """
    from safetensors.torch import save_file

    dst = Path(dst)
    tmp = _atomic_dir(dst, overwrite=overwrite) if write else None
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, files, weight_map = 0, [], {}

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard and tmp is not None:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update({k: name for k in shard})
        shard, shard_bytes = {}, 0

    for name, tensor in named_tensors:
        if not write:
            continue
        nbytes = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + nbytes > max_shard_bytes:
            flush()
        shard[name] = tensor.detach().to("cpu").contiguous().clone()
        shard_bytes += nbytes
    flush()
    if tmp is None:
        return
    if len(files) == 1:
        (tmp / files[0]).rename(tmp / "model.safetensors")
    else:
        index = {"metadata": {"total_size": sum((tmp / f).stat().st_size for f in files)}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(json.dumps(spec.to_hf_config(), indent=2))
    for fname, text in (extra_files or {}).items():
        (tmp / fname).write_text(text)
    _commit_dir(tmp, dst)


MEGATRON_META = "prefixrl_model.json"
"""File in a Megatron checkpoint dir that records the HF architecture (the dist checkpoint holds only tensors)."""


def save_megatron_checkpoint(chunks: list[torch.nn.Module], dst: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Megatron distributed checkpoint (torch_dist) of the model weights, loadable at any TP/PP. Collective."""
    from megatron.core import dist_checkpointing

    from megatron_ext.models import spec_of, unwrap

    dst = Path(dst)
    rank = dist.get_rank()
    tmp = _atomic_dir(dst, overwrite=overwrite) if rank == 0 else None
    tmp_name = [str(tmp) if tmp else ""]
    dist.broadcast_object_list(tmp_name, src=0)
    tmp = Path(tmp_name[0])
    sharded = unwrap(chunks[0]).sharded_state_dict(prefix="model.")
    dist_checkpointing.save(sharded, str(tmp))
    dist.barrier()
    if rank == 0:
        (tmp / MEGATRON_META).write_text(json.dumps(spec_of(chunks).to_hf_config(), indent=2))
        _commit_dir(tmp, dst)
    dist.barrier()


def load_megatron_checkpoint(src: str | os.PathLike, *, precision: Any = None) -> list[torch.nn.Module]:
    """Build this rank's chunks for a checkpoint written by save_megatron_checkpoint and load its weights."""
    from megatron.core import dist_checkpointing

    from megatron_ext import models
    from megatron_ext.models import unwrap

    src = Path(src)
    meta = src / MEGATRON_META
    if not meta.exists():
        raise FileNotFoundError(f"{src} is not a complete PrefixRL Megatron checkpoint ({MEGATRON_META} is missing)")
    spec = ModelSpec.from_hf_config(json.loads(meta.read_text()))
    chunks = models.build(spec, precision=precision or models.PrecisionConfig(), for_loading=True)  # strict load
    model = unwrap(chunks[0])
    state = dist_checkpointing.load(model.sharded_state_dict(prefix="model."), str(src))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    return chunks


# ---------------------------------------------------------------------------------------------------- CLI jobs
def _hf_to_megatron_worker(rank: int, world: int, port: int, src: str, dst: str, tp: int, pp: int,
                           overwrite: bool) -> None:
    from megatron_ext import models, runtime

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    runtime.initialize(tensor_parallel=tp, pipeline_parallel=pp)
    try:
        save_megatron_checkpoint(models.from_hf(src), dst, overwrite=overwrite)
    finally:
        runtime.shutdown()


def hf_to_megatron(src: str | os.PathLike, dst: str | os.PathLike, *, tp: int = 1, pp: int = 1,
                   overwrite: bool = False) -> None:
    """Convert an HF checkpoint into a Megatron dist checkpoint, loading it at TP=tp, PP=pp (tp*pp processes)."""
    import torch.multiprocessing as mp

    from megatron_ext.runtime import free_port

    src, dst = Path(src), Path(dst)
    ModelSpec.from_pretrained(src).check_parallel(tensor_parallel=tp, pipeline_parallel=pp)
    HFCheckpoint(src)  # fail here, not in every child, when the weights are missing
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; choose a new destination or pass --overwrite")
    world = tp * pp
    mp.start_processes(_hf_to_megatron_worker, args=(world, free_port(), str(src), str(dst), tp, pp, overwrite),
                       nprocs=world, start_method="spawn")


def megatron_to_hf(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Convert a Megatron dist checkpoint (any saved TP/PP) into an HF checkpoint, in one process."""
    from megatron_ext import models, runtime

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; choose a new destination or pass --overwrite")
    runtime.initialize()
    try:
        chunks = load_megatron_checkpoint(src)
        save_hf_checkpoint(export_hf(chunks), models.spec_of(chunks), dst, overwrite=overwrite)
    finally:
        runtime.shutdown()
