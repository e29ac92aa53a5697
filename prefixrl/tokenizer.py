"""A small sentencepiece BPE tokenizer trained in-process, for the synthetic CPU task and the tiny models.

    tok = SentencePieceTokenizer.train(texts, vocab_size=384)       # about 0.1 s for a few thousand lines
    tok.save("runs/demo/tokenizer.model"); tok = SentencePieceTokenizer.load("runs/demo/tokenizer.model")
    ids = tok.apply_chat_template([{"role": "user", "content": "Compute 3 + 4."}], add_generation_prompt=True)

It satisfies `prefixrl.protocols.Tokenizer`. Special ids follow the tiny presets of `megatron_ext.spec` (pad 0,
unk 1, bos 2, eos 3); the assistant ends its turn with EOS. The chat template is fixed:

    <|system|>{system}<|end|>\n<|user|>{user}<|end|>\n<|assistant|>{assistant}</s>...

The role markers are user-defined pieces, so they are encoded from text (`chat_prompt_ids` renders the template to
text and encodes it). Normalisation is the identity, there is no dummy space prefix and digits are split, so
`decode(ids[:h]) + decode(ids[h:]) == decode(ids)` for every cut h of an encoded text (prefix text + completion
text is the full response the verifier judges) and arithmetic is digit by digit.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
ROLE_MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_MESSAGE = "<|end|>"
MIN_VOCAB_SIZE = 320
"""256 byte-fallback pieces + 4 specials + role markers + the task's characters, with room for a few merges."""


class SentencePieceTokenizer:
    """HF-like wrapper of a sentencepiece model (see the module docstring)."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        expected = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}
        actual = {i: self.sp.id_to_piece(i) for i in expected}
        if actual != expected:
            raise ValueError(f"sentencepiece model has special pieces {actual}, expected {expected}; train it with "
                             "SentencePieceTokenizer.train")
        self.name = "prefixrl-sp-" + hashlib.sha256(model_proto).hexdigest()[:12]
        """Identity of this tokenizer (stored on traces to detect traces from another tokenizer)."""

    # ------------------------------------------------------------------------------------------------- build, i/o
    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int = 384) -> SentencePieceTokenizer:
        """Train a BPE model on `texts` in memory; the result has at most `vocab_size` pieces."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size={vocab_size} is too small for byte fallback; use >= {MIN_VOCAB_SIZE}")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            user_defined_symbols=[*ROLE_MARKERS.values(), END_OF_MESSAGE, "\n"],
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            split_digits=True, allow_whitespace_only_pieces=True, hard_vocab_limit=False, num_threads=1,
            minloglevel=2,
        )  # fmt: skip
        return cls(buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no tokenizer model at {p}; train one with SentencePieceTokenizer.train(...)")
        return cls(p.read_bytes())

    def save(self, path: str | os.PathLike) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.model_proto)

    # ------------------------------------------------------------------------------------------------ ids
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    eos_token_id = eos_id
    pad_token_id = pad_id
    bos_token_id = bos_id

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; add_special_tokens prepends BOS (the chat template does not use BOS)."""
        ids = list(self.sp.encode(text))
        return [BOS_ID, *ids] if add_special_tokens else ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`; pad, bos and eos decode to nothing."""
        return self.sp.decode([int(i) for i in token_ids])

    def apply_chat_template(
        self, conversation: list[dict[str, str]], *, tokenize: bool = True, add_generation_prompt: bool = False
    ) -> Any:
        """Render the fixed template (module docstring); token ids when `tokenize`, else text."""
        parts: list[str] = []
        for message in conversation:
            role = message.get("role")
            if role not in ROLE_MARKERS:
                raise ValueError(f"chat message role {role!r} is not supported; use one of {list(ROLE_MARKERS)}")
            end = "" if role == "assistant" else END_OF_MESSAGE + "\n"
            parts.append(f"{ROLE_MARKERS[role]}{message['content']}{end}")
        if add_generation_prompt:
            parts.append(ROLE_MARKERS["assistant"])
        text = "".join(parts)
        return self.encode(text) if tokenize else text
