"""Tiny random HF models built from configs (no downloads), saved as safetensors for conversion tests."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_ext.spec import ModelSpec, tiny_preset


def tiny_spec(family: str, **overrides) -> ModelSpec:
    """A tiny preset with overrides, e.g. tiny_spec("llama", vocab_size=1000) for vocab padding."""
    import dataclasses

    return dataclasses.replace(tiny_preset(f"tiny-{family}"), **overrides)


def save_hf_model(spec: ModelSpec, path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                  max_shard_size: str | None = None) -> Path:
    """Build a random HF model for `spec` with transformers and save it (config.json + safetensors)."""
    import transformers

    cfg_dict = spec.to_hf_config()
    cfg = transformers.AutoConfig.for_model(**cfg_dict)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    # Randomise norms and biases too, so layout mistakes in them cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return path


def hf_logits(path: Path, input_ids: torch.Tensor) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(input_ids).logits.float()


TP_SPLIT_WEIGHTS = ("word_embeddings.weight", "linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight",
                    "linear_fc2.weight", "output_layer.weight")
"""Megatron weights split across tensor-parallel ranks (vocab, columns or rows)."""


def unmarked_tp_weights(model: torch.nn.Module) -> list[str]:
    """TP-split weights that lack Megatron's `tensor_model_parallel` mark: the gradient norm would count them on one
    rank only (a TP=2 tied-embedding grad norm came out 15.7 instead of 20.8 when from_hf skipped initialisation)."""
    return [n for n, p in model.named_parameters()
            if n.endswith(TP_SPLIT_WEIGHTS) and not getattr(p, "tensor_model_parallel", False)]


def rl_batch(seed: int, *, vocab: int = 1000, num_seqs: int = 4):
    """A deterministic RL batch: random prompt+prefix and completion lengths, mixed-sign advantages."""
    from prefixrl.batching import RLBatch

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, 9, (num_seqs, 2), generator=g).tolist()
    prompts = [torch.randint(4, vocab, (p,), generator=g).tolist() for p, _ in lens]
    comps = [torch.randint(4, vocab, (c,), generator=g).tolist() for _, c in lens]
    adv = (torch.randn(num_seqs, generator=g)).tolist()
    return RLBatch.from_lists(prompts, comps, adv)


def hf_oracle_grads(path: Path, batch, *, temperature: float) -> tuple[dict, torch.Tensor]:
    """Gradients of the prefix-masked REINFORCE loss computed with HF transformers (independent oracle)."""
    import transformers

    from prefixrl import losses
    from prefixrl.batching import token_logprobs

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    logits = model(batch.tokens_BT).logits / temperature
    lp_BT = token_logprobs(logits, batch.tokens_BT)
    loss, _ = losses.policy_gradient(lp_BT, batch.advantages_B, batch.loss_mask_BT, num_tokens=batch.num_tokens)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}, loss.detach()
