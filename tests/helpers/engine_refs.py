"""Reference log-probs from HF transformers for engine tests and benchmarks (fp32, CPU).

Shapes: T = completion tokens, V = vocab.
"""

from __future__ import annotations

from pathlib import Path

import torch


def load_hf(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def hf_completion_logprobs(model, prompt: list[int], completion: list[int], *, temperature: float) -> torch.Tensor:
    """[T] log-probs of `completion` given `prompt` under log_softmax(logits / temperature); T = 0 means 1."""
    ids = torch.tensor([prompt + completion])
    logits_TV = model(ids).logits[0, len(prompt) - 1 : -1].float()
    if temperature > 0:
        logits_TV = logits_TV / temperature
    logprobs_TV = torch.log_softmax(logits_TV, dim=-1)
    return logprobs_TV.gather(-1, torch.tensor(completion)[:, None])[:, 0]


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The HF-named tensors of a saved checkpoint, as a trainer export stream would yield them."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state
