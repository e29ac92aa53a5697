"""Append-only, checksummed JSONL shards that survive being killed at any moment.

Each line is `<crc32 of the JSON text, 8 hex digits> <JSON text>\\n`, written with one `write`, then `flush` and
`os.fsync`. A process killed mid-write leaves at most one damaged line, the last of its file; `read_records` detects
it (no newline, bad checksum or bad JSON), logs it and ignores it. A damaged line anywhere else means the file was
edited or the disk is corrupt, and raises ValueError naming the file and line.

Writers never reopen an old shard: every run starts a new part file (`next_shard_path`), so a damaged tail stays the
last line of its own file forever.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)


def encode_record(record: dict[str, Any]) -> str:
    """One framed line, newline included."""
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    return f"{zlib.crc32(text.encode()):08x} {text}\n"


def _decode_line(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n") or len(line) < 10 or line[8] != " ":
        return None
    crc, text = line[:8], line[9:-1]
    if f"{zlib.crc32(text.encode()):08x}" != crc:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def append_record(f: IO[str], record: dict[str, Any]) -> None:
    """Append one record durably (write, flush, fsync)."""
    f.write(encode_record(record))
    f.flush()
    os.fsync(f.fileno())


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """All intact records of one shard, and the number of damaged trailing lines ignored (0 or 1)."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        lines = f.readlines()
    records = []
    for lineno, line in enumerate(lines, start=1):
        record = _decode_line(line)
        if record is not None:
            records.append(record)
        elif lineno == len(lines):
            logger.warning("%s:line %d is truncated or damaged (killed writer?); ignoring it", path, lineno)
            return records, 1
        else:
            raise ValueError(
                f"{path}:line {lineno} is damaged but is not the last line, so it was not left by a killed writer; "
                "restore the file or remove the line by hand"
            )
    return records, 0


def next_shard_path(out_dir: str | Path, *, stem: str) -> Path:
    """`<out_dir>/<stem>-pNNNN.jsonl` with NNNN one above the highest existing part of this stem."""
    out_dir = Path(out_dir)
    pattern = re.compile(re.escape(stem) + r"-p(\d{4})\.jsonl$")
    parts = [int(m.group(1)) for p in out_dir.glob(f"{stem}-p*.jsonl") if (m := pattern.match(p.name))]
    return out_dir / f"{stem}-p{max(parts, default=-1) + 1:04d}.jsonl"
