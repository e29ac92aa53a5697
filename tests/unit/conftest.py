"""Shared fakes for the unit tests: a character-level tokenizer that renders real chat templates with jinja2."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared"
DATA = SHARED / "data"


class CharTokenizer:
    """One token per character (id = code point); renders a real HF chat template like transformers does."""

    def __init__(self, template_path: Path | None = None):
        self.template = None
        if template_path is not None:
            import jinja2.sandbox

            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
            self.template = env.from_string(template_path.read_text())

    def encode(self, text, *, add_special_tokens=True):
        return [ord(ch) for ch in text]

    def decode(self, token_ids):
        return "".join(chr(i) for i in token_ids)

    def apply_chat_template(self, conversation, *, tokenize=True, add_generation_prompt=False):
        if self.template is not None:
            text = self.template.render(
                messages=conversation, add_generation_prompt=add_generation_prompt, bos_token="<s>"
            )
        else:
            text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in conversation)
            text += "<assistant>" if add_generation_prompt else ""
        return self.encode(text) if tokenize else text


class ByteTokenizer(CharTokenizer):
    """A different 'family': ids are UTF-8 bytes offset by 1000."""

    def encode(self, text, *, add_special_tokens=True):
        return [b + 1000 for b in text.encode()]

    def decode(self, token_ids):
        return bytes(i - 1000 for i in token_ids).decode(errors="replace")


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()
