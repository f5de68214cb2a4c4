"""Text records -> documents: the input files of `trm-ray data build text`.

    docs = read_documents("stories.jsonl", lowercase=True)   # one string per record, in file order

A record is an object with a `text` string, or a `messages` list of {role, content} objects,
rendered as "<|role|>\\ncontent\\n" per message (the role markers let a model tell the turns
apart). Files:
- JSON Lines (one record per line, blank lines skipped) or a JSON array of records: told apart
  by the first character of the file ('[' for an array), whatever the file is called, because
  many `.json` files are JSON Lines;
- `.parquet`: a `text` column, else a `messages` column;
- `.txt`: documents separated by lines holding only `<|endoftext|>` (the separator of the
  TinyStories text files); a file without one is one document.
A path is local or a filesystem URI (trm_ray.storage). Every problem is a one-line
DatasetBuildError naming the file and the line (JSON Lines) or element index (JSON array).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Optional

from trm_ray import storage
from trm_ray.data.sources import DatasetBuildError
from trm_ray.errors import first_line

END_OF_TEXT = "<|endoftext|>"
RECORD_HINT = "a record needs a 'text' string or a 'messages' list of {role, content} objects: fix the file"
# File kinds the hub source downloads, in order of preference (see trm_ray.text.build).
PARQUET, JSONL, JSON, TXT = ".parquet", ".jsonl", ".json", ".txt"


def render_messages(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)


def render_record(record: Any, where: str) -> str:
    """The document text of one record; DatasetBuildError naming `where` when it has neither
    kind of content."""
    if not isinstance(record, dict):
        raise DatasetBuildError(f"{where}: the record is a {type(record).__name__}, not an object: {RECORD_HINT}")
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str):
            raise DatasetBuildError(f"{where}: 'text' is a {type(text).__name__}, not a string: {RECORD_HINT}")
        return text
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list):
            raise DatasetBuildError(f"{where}: 'messages' is a {type(messages).__name__}, not a list: {RECORD_HINT}")
        for k, message in enumerate(messages):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise DatasetBuildError(f"{where}: messages[{k}] is not an object with 'role' and 'content' "
                                        f"strings: {RECORD_HINT}")
        return render_messages(messages)
    keys = ", ".join(repr(k) for k in list(record)[:5]) or "none"
    raise DatasetBuildError(f"{where}: the record has neither 'text' nor 'messages' (keys: {keys}): {RECORD_HINT}")


def _read_bytes(path: str) -> bytes:
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        raise DatasetBuildError(f"input {path!r} does not exist: check --input-paths") from None
    except IsADirectoryError:
        raise DatasetBuildError(f"input {path!r} is a folder: name the JSON/JSONL files in it") from None
    except OSError as error:
        raise DatasetBuildError(f"input {path!r} cannot be read ({first_line(error)}): check the file and its "
                                f"permissions") from None


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is no part of the text
    except UnicodeDecodeError as error:
        raise DatasetBuildError(f"input {path!r} is not UTF-8 text ({error.reason} at byte {error.start}): "
                                f"re-encode the file as UTF-8") from None


def _json_lines(path: str, text: str) -> list[str]:
    documents = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetBuildError(f"{where}: not valid JSON ({error.msg} at column {error.colno}): fix the line "
                                    f"(a JSON Lines file holds one record per line)") from None
        documents.append(render_record(record, where))
    return documents


def _json_array(path: str, text: str) -> list[str]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetBuildError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}): "
                                f"fix the file") from None
    if not isinstance(records, list):  # pragma: no cover - a file starting with '[' parses to a list
        raise DatasetBuildError(f"{path}: a JSON file must hold an array of records: fix the file")
    return [render_record(record, f"{path}[{k}]") for k, record in enumerate(records)]


def _parquet(path: str, data: bytes) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(io.BytesIO(data))
        names = file.schema_arrow.names
        column = "text" if "text" in names else "messages" if "messages" in names else None
        if column is None:
            raise DatasetBuildError(f"{path}: the parquet file has neither a 'text' nor a 'messages' column "
                                    f"(columns: {', '.join(names[:8])}): {RECORD_HINT}")
        values = file.read(columns=[column]).column(column).to_pylist()
    except pa.ArrowException as error:
        raise DatasetBuildError(f"input {path!r} is not a readable parquet file ({first_line(error)}): "
                                f"fix or re-download it") from None
    return [render_record({column: value}, f"{path} row {k}") for k, value in enumerate(values)]


def _text_file(text: str) -> list[str]:
    if not any(line.strip() == END_OF_TEXT for line in text.splitlines()):
        return [text.strip()] if text.strip() else []
    documents, current = [], []
    for line in text.splitlines():
        if line.strip() == END_OF_TEXT:
            documents.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    documents.append("\n".join(current).strip())
    return [d for d in documents if d]


def file_kind(path: str) -> str:
    name = storage.name_of(path).lower()
    for kind in (PARQUET, TXT):
        if name.endswith(kind):
            return kind
    return JSONL if name.endswith((JSONL, ".ndjson")) else JSON


def read_documents(path: str, lowercase: bool = False) -> list[str]:
    """The rendered documents of one input file, in file order (lowercased when asked)."""
    path = os.fspath(path)
    data = _read_bytes(path)
    kind = file_kind(path)
    if kind == PARQUET:
        documents = _parquet(path, data)
    else:
        text = _decode(path, data)
        if kind == TXT:
            documents = _text_file(text)
        elif text.lstrip()[:1] == "[":
            documents = _json_array(path, text)
        else:
            documents = _json_lines(path, text)
    return [d.lower() for d in documents] if lowercase else documents


def read_documents_task(path: str, lowercase: bool) -> tuple[Optional[list[str]], Optional[str]]:
    """read_documents for a build task: a user-caused problem comes back as its message (the
    driver raises it), so it reaches the user as one line wherever the task ran."""
    try:
        return read_documents(path, lowercase), None
    except DatasetBuildError as error:
        return None, str(error)
