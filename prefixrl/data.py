"""Problem sets and chat formatting.

Problem sets load from JSONL (`.jsonl`), Parquet (`.parquet`) or a local Hugging Face `datasets` directory (saved
with `save_to_disk`), with configurable field names:

    problems = load_problems(ProblemSetConfig(path="../shared/data/math500.jsonl"))

Bad rows fail loud with the file and line (or row) number: malformed JSON, a missing field, an empty prompt, a
duplicate id.

A prefixed prompt is *user turn + generation prompt + prefix token ids*: an unfinished assistant turn built by
concatenating token ids (`prefixed_prompt_ids`), never by decoding and re-tokenising across the boundary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefixrl.protocols import Tokenizer
from prefixrl.records import Problem

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, frozen=True)
class ProblemSetConfig:
    """Where a problem set lives and which fields hold what."""

    path: str
    """A `.jsonl` or `.parquet` file, or a directory written by `datasets.Dataset.save_to_disk`."""
    id_field: str | None = "id"
    """Field with a unique problem id; None numbers the rows `<source>-<row>` instead."""
    prompt_field: str = "problem"
    """Field with the problem statement (the user turn)."""
    answer_field: str = "answer"
    """Field with the reference final answer; non-string values are converted with `str`."""
    source: str | None = None
    """Name stored on every problem; None uses the file or directory stem."""
    split: str | None = None
    """Split to read when the `datasets` directory holds a `DatasetDict`; ignored for files."""

    def __post_init__(self) -> None:
        if not self.prompt_field or not self.answer_field:
            raise ValueError(
                f"prompt_field={self.prompt_field!r} and answer_field={self.answer_field!r} must be non-empty "
                "field names, e.g. prompt_field='problem', answer_field='answer'"
            )
        if self.id_field == "":
            raise ValueError("id_field='' is not a field name; use id_field=None to number the rows instead")


def load_problems(cfg: ProblemSetConfig) -> list[Problem]:
    """Load and validate a problem set; raises ValueError naming the file and line of the first bad row."""
    path = Path(cfg.path)
    if not path.exists():
        raise FileNotFoundError(f"problem set {path} does not exist; check ProblemSetConfig.path")
    if path.is_dir():
        rows, where = _iter_datasets_dir(path, split=cfg.split), "row"
    elif path.suffix == ".jsonl":
        rows, where = _iter_jsonl(path), "line"
    elif path.suffix == ".parquet":
        rows, where = _iter_parquet(path), "row"
    else:
        raise ValueError(f"unsupported problem file {path}: use .jsonl, .parquet or a datasets directory")
    if cfg.split is not None and not path.is_dir():
        logger.warning("ProblemSetConfig.split=%r is ignored for the file %s", cfg.split, path)

    source = cfg.source if cfg.source is not None else path.stem
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, row in rows:
        loc = f"{path}:{where} {lineno}"
        problem = _row_to_problem(row, cfg=cfg, source=source, index=lineno, loc=loc)
        if problem.problem_id in seen:
            raise ValueError(
                f"{loc}: duplicate id {problem.problem_id!r} (first seen at {where} {seen[problem.problem_id]}); "
                "problem ids must be unique"
            )
        seen[problem.problem_id] = lineno
        problems.append(problem)
    if not problems:
        raise ValueError(f"problem set {path} is empty")
    logger.info("loaded %d problems from %s", len(problems), path)
    return problems


def _row_to_problem(row: Any, *, cfg: ProblemSetConfig, source: str, index: int, loc: str) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(f"{loc}: expected a JSON object, got {type(row).__name__}")
    required = [cfg.prompt_field, cfg.answer_field] + ([cfg.id_field] if cfg.id_field is not None else [])
    missing = [f for f in required if f not in row or row[f] is None]
    if missing:
        raise ValueError(
            f"{loc}: missing field(s) {missing}; present fields are {sorted(row)}. "
            "Set ProblemSetConfig.id_field / prompt_field / answer_field to the right names"
        )
    prompt = row[cfg.prompt_field]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{loc}: empty or non-string prompt in field {cfg.prompt_field!r}: {prompt!r}")
    answer = str(row[cfg.answer_field]).strip()
    if not answer:
        raise ValueError(f"{loc}: empty reference answer in field {cfg.answer_field!r}")
    problem_id = str(row[cfg.id_field]) if cfg.id_field is not None else f"{source}-{index}"
    used = set(required)
    metadata = {k: v for k, v in row.items() if k not in used}
    return Problem(problem_id=problem_id, prompt=prompt, answer=answer, source=source, metadata=metadata)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:line {lineno}: malformed JSON ({e.msg} at column {e.colno})") from e


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow; install it with `pip install pyarrow`") from e
    for index, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield index, row


def _iter_datasets_dir(path: Path, *, split: str | None) -> Iterator[tuple[int, Any]]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"{path} is a directory, read as a Hugging Face `datasets` save; that needs the `datasets` package "
            "(`pip install datasets`), or convert the set to .jsonl / .parquet"
        ) from e
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise ValueError(f"{path} holds splits {list(ds)}; set ProblemSetConfig.split to one of them")
        ds = ds[split]
    for index, row in enumerate(ds, start=1):
        yield index, row


@dataclass(kw_only=True, frozen=True)
class ChatFormatConfig:
    """How a problem becomes the user turn of a chat."""

    user_template: str = "{prompt}"
    """Python format string for the user message; `{prompt}` is replaced by the problem text."""
    system_prompt: str | None = None
    """Optional system message; None sends no system turn."""

    def __post_init__(self) -> None:
        if "{prompt}" not in self.user_template:
            raise ValueError(
                f"user_template={self.user_template!r} has no '{{prompt}}' placeholder; "
                "add one, e.g. '{prompt}\\nPut the final answer in \\\\boxed{{}}.'"
            )


def chat_prompt_ids(problem: Problem, *, tokenizer: Tokenizer, cfg: ChatFormatConfig) -> list[int]:
    """User turn + generation prompt (assistant header), as token ids, via the tokenizer's chat template.

    The template is rendered to text and encoded without extra special tokens, since chat templates already emit
    BOS where the model needs it.
    """
    messages = [] if cfg.system_prompt is None else [{"role": "system", "content": cfg.system_prompt}]
    messages.append({"role": "user", "content": cfg.user_template.format(prompt=problem.prompt)})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return list(tokenizer.encode(text, add_special_tokens=False))


def prefixed_prompt_ids(prompt_ids: list[int], prefix_ids: list[int]) -> list[int]:
    """The prompt of a prefixed problem: `prompt_ids + prefix_ids`, an unfinished assistant turn.

    `prompt_ids` must already end with the generation prompt (assistant header). No end-of-turn token is added and
    nothing is re-tokenised, so BPE merges across the cut cannot change the prefix (method notes 2.4).
    """
    return [*prompt_ids, *prefix_ids]
