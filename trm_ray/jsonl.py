"""JSON Lines, one way for the whole package: a run's metrics.jsonl (trm_ray.run_folder) and a
sweep's trials.jsonl (trm_ray.tune.records) are written and read here.

    jsonl.append("runs/x/metrics.jsonl", {"step": 1, "train/loss": 0.5})   # a local path or a URI
    jsonl.read("s3://bucket/runs/x/metrics.jsonl")                          # [] when there is none

Writing: one JSON object a line. Non-finite numbers become null (JSON has no NaN; the readers
of these files, jq or pandas among them, would reject the line), values JSON has no type for are
written as their str(). A local file gets the line appended, flushed and fsync'ed, so a process
killed at any point loses at most the line being written; a last line cut short by an earlier
kill is dropped before the new one goes on, or the two would be glued into one unreadable line.
An object at a URI cannot be appended to: it is read and written back whole with one PUT, which
readers see whole or not at all (meant for files written by one process at a time).

Reading: a line that is not a JSON object (cut short by a crash or a full disk) is skipped, with
one note on stderr for the file; the other lines are still the file's history.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from trm_ray import storage


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (in nested mappings and lists too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def encode(record: Mapping[str, Any]) -> str:
    """One record as its line, newline included."""
    return json.dumps(json_safe(dict(record)), default=str) + "\n"


def whole_lines(text: str) -> str:
    """`text` without a last line cut short (a writer killed while writing it)."""
    return text if not text or text.endswith("\n") else text[: text.rfind("\n") + 1]


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a local file, flushed and fsync'ed, dropping a cut-short last line first."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                handle.seek(0)
                handle.truncate(len(whole_lines(handle.read().decode(errors="replace")).encode()))
        handle.write(line.encode())
        handle.flush()
        os.fsync(handle.fileno())


def replace_synced(path: str | os.PathLike, text: str) -> None:
    """Replace a local file whole and fsync it (a temporary name, then os.replace)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def append(location: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Add one record at the end of the file at `location` (a local path or a URI)."""
    line = encode(record)
    if not storage.is_uri(location):
        append_line(location, line)
        return
    try:
        old = storage.read_bytes(location)
    except FileNotFoundError:
        old = b""
    storage.write_bytes(location, old + line.encode())


def parse(text: str, source: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of `text`, one a line; lines that are not one are skipped, with one note
    on stderr naming `source` (where the text came from)."""
    records, skipped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    if skipped:
        print(f"trm-ray: {source}: skipped {skipped} unreadable line(s)", file=sys.stderr)
    return records


def read(location: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of the file at `location` (a local path or a URI); [] when there is none."""
    try:
        text = storage.read_text(location)
    except FileNotFoundError:
        return []
    return parse(text, location)
