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
from tests.helpers.hf_models import hf_logits, hf_oracle_grads, rl_batch, save_hf_model, tiny_spec


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


def grad_parity(*, tp: int, pp: int, family: str, tmp: str, distributed_optimizer: bool) -> None:
    """Prefix-masked loss gradients and log-probs at this layout equal HF's full-vocab oracle (1e-5)."""
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from prefixrl.batching import token_logprobs

    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, pipeline_parallel=pp, seed=0)
    try:
        path = _shared_hf_model(family, root, vocab_size=1000)
        temperature = 0.7
        policy = MegatronPolicy(PolicyConfig(
            model=str(path), optim=OptimizerSettings(lr=1e-4, warmup_steps=0, clip_grad=0.0), micro_batch_size=1,
            max_seq_len=64, temperature=temperature, use_distributed_optimizer=distributed_optimizer))
        batch = rl_batch(0)
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        with torch.no_grad():
            ref_lp = token_logprobs(hf(batch.tokens_BT).logits / temperature, batch.tokens_BT) * batch.loss_mask_BT
        lp = policy.logprobs(batch)
        err = (lp - ref_lp).abs().max().item()
        assert err < 1e-5, f"log-probs differ from the full-vocab reference by {err}"
        print(f"LOGPROBS tp={tp} pp={pp} max_abs_err={err:.2e}")
        ref_grads, ref_loss = hf_oracle_grads(path, batch, temperature=temperature)
        metrics = policy.train_step(batch)
        assert abs(metrics["loss/total"] - ref_loss.item()) < 1e-5, (metrics["loss/total"], ref_loss.item())
        ref_norm = torch.sqrt(sum((g.double() ** 2).sum() for n, g in ref_grads.items())).item()
        assert abs(metrics["policy/grad_norm"] - ref_norm) < 1e-4 * max(1.0, ref_norm), (metrics, ref_norm)  # fp32 sum
        print(f"GRADNORM tp={tp} pp={pp} dp={policy.dp_size} megatron={metrics['policy/grad_norm']:.6f} "
              f"hf={ref_norm:.6f}")
        if not distributed_optimizer or policy.dp_size == 1:
            worst = 0.0
            for name, grad in convert.export_hf(policy.model, gradients=True):
                worst = max(worst, (grad.float() - ref_grads[name]).abs().max().item())
            assert worst < 1e-5, f"gradients differ from HF's by {worst}"
            print(f"GRADS tp={tp} pp={pp} max_abs_err={worst:.2e}")
    finally:
        runtime.shutdown()


def train_steps(*, tmp: str, tp: int, steps: int, resume: bool, save_at: int, tag: str) -> None:
    """Train on deterministic batches; optionally resume from the checkpoint; dump params and metrics."""
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig

    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, seed=0)
    try:
        path = _shared_hf_model("llama", root, vocab_size=1000)
        policy = MegatronPolicy(PolicyConfig(model=str(path), optim=OptimizerSettings(lr=1e-3, warmup_steps=2),
                                             micro_batch_size=2, max_seq_len=64))
        cursor = policy.load(root / "ckpt")["cursor"] if resume else 0
        history = []
        while cursor < steps:
            m = policy.train_step(rl_batch(100 + cursor))
            cursor += 1
            history.append({k: v for k, v in m.items()})
            if cursor == save_at:
                policy.save(root / "ckpt", extra={"cursor": cursor})
        if dist.get_rank() == 0:
            torch.save({"params": policy.parameters_fp32(), "history": history, "step": policy.step},
                       root / f"{tag}.pt")
    finally:
        runtime.shutdown()


def policy_reshard_logits(*, tmp: str, tp: int) -> None:
    """A policy checkpoint (saved at another TP) loads at this TP with the same logits as saved."""
    from megatron_ext.policy import MegatronPolicy, PolicyConfig

    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, seed=0)
    try:
        policy = MegatronPolicy(PolicyConfig(model=str(root / "hf-llama"), max_seq_len=64))
        policy.load(root / "ckpt")
        ids = torch.randint(0, 1000, (2, 13), generator=torch.Generator().manual_seed(3))
        out = models.logits(policy.model, ids)
        if dist.get_rank() == 0:
            torch.save(out, root / f"logits-tp{tp}.pt")
    finally:
        runtime.shutdown()


def policy_step_and_export(*, tmp: str, tp: int, pp: int, family: str) -> None:
    """One optimizer step at this layout, then the weight-sync stream written as an HF checkpoint + a policy save."""
    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig

    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, pipeline_parallel=pp, seed=0)
    try:
        path = _shared_hf_model(family, root, vocab_size=1000)
        policy = MegatronPolicy(PolicyConfig(model=str(path), optim=OptimizerSettings(lr=1e-2, warmup_steps=0),
                                             max_seq_len=64))
        policy.train_step(rl_batch(0))
        convert.save_hf_checkpoint(policy.export_hf(), policy.spec, root / "after", write=dist.get_rank() == 0)
        policy.save(root / "ckpt")
    finally:
        runtime.shutdown()


def policy_score(*, tmp: str, tp: int, pp: int, family: str) -> None:
    """Score the engine's sampled tokens with the stepped policy; compare with the engine's log-probs."""
    from megatron_ext.policy import MegatronPolicy, PolicyConfig
    from prefixrl.batching import RLBatch

    root = Path(tmp)
    runtime.initialize(tensor_parallel=tp, pipeline_parallel=pp, seed=0)
    try:
        sampled = json.loads((root / "engine.json").read_text())
        policy = MegatronPolicy(PolicyConfig(model=str(root / f"hf-{family}"), max_seq_len=64))
        policy.load(root / "ckpt")
        batch = RLBatch.from_lists(sampled["prompts"], sampled["completions"], [0.0] * len(sampled["prompts"]),
                                   old_logprobs=sampled["logprobs"])
        trainer_BT = policy.logprobs(batch)
        err = ((trainer_BT - batch.old_logprobs_BT) * batch.loss_mask_BT).abs().max().item()
        assert err < 1e-4, f"engine vs Megatron log-probs differ by {err} after a step + sync"
        print(f"SYNC {family} tp={tp} pp={pp} max_abs_logprob_diff={err:.2e}")
    finally:
        runtime.shutdown()


def colocated_engine_sync(*, tmp: str, engine_tp: int) -> None:
    """Megatron TP=2 and a vLLM engine in the same two torchrun processes (external_launcher): after an optimizer
    step and a sync, every rank samples the same tokens and the policy's log-probs equal vLLM's."""
    import os

    from megatron_ext.policy import MegatronPolicy, OptimizerSettings, PolicyConfig
    from prefixrl.batching import RLBatch
    from prefixrl.engine.vllm import VLLMEngine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    root = Path(tmp)
    runtime.initialize(tensor_parallel=2, seed=0)
    engine = None
    try:
        path = _shared_hf_model("qwen2", root, vocab_size=1000)
        policy = MegatronPolicy(PolicyConfig(model=str(path), optim=OptimizerSettings(lr=1e-2, warmup_steps=0),
                                             max_seq_len=64))
        engine = VLLMEngine(path, tensor_parallel=engine_tp, max_model_len=64, seed=0,
                            distributed_executor_backend="external_launcher")
        policy.train_step(rl_batch(0))
        engine.update_weights(policy.export_hf())
        prompt = [2, 17, 99, 250]
        outs = engine.generate([prompt], n=4, max_tokens=8, seed=0)[0]
        tokens = [c.token_ids for c in outs]
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, tokens)
        assert all(g == tokens for g in gathered), "ranks sampled different tokens from the colocated engine"
        batch = RLBatch.from_lists([prompt] * len(outs), tokens, [0.0] * len(outs),
                                   old_logprobs=[c.logprobs for c in outs])
        err = ((policy.logprobs(batch) - batch.old_logprobs_BT) * batch.loss_mask_BT).abs().max().item()
        assert err < 1e-4, f"colocated engine vs Megatron log-probs differ by {err}"
        print(f"COLOCATED megatron_tp=2 engine_tp={engine_tp} max_abs_logprob_diff={err:.2e}")
    finally:
        if engine is not None:
            engine.shutdown()
        runtime.shutdown()


if __name__ == "__main__":
    import faulthandler
    import os

    # A hung collective dumps every thread's stack and exits instead of eating the test's whole timeout.
    faulthandler.dump_traceback_later(int(os.environ.get("PREFIXRL_WORKER_TIMEOUT", "300")), exit=True)
    func, kwargs = sys.argv[1], json.loads(sys.argv[2])
    globals()[func](**kwargs)
