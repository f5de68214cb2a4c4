"""Build a text dataset (`trm-ray data build text`): documents -> tokens -> packed windows.

    from trm_ray.text.build import build_text_dataset
    info = build_text_dataset(input_paths=["stories.jsonl"], output_dir="data/stories", max_sequence_length=128)
    info = build_text_dataset(source="generate:stories", num_documents=2000, output_dir="data/gen",
                              max_sequence_length=128, tokenizer="bpe:1024")

Steps (where each runs is trm_ray.data.builder.ordered_map's choice: Ray Data tasks, local
processes or this process; the bytes are the same):
1. read: one task per input file (trm_ray/text/records.py), or per chunk of generated records
   (trm_ray/text/stories.py); a hub source (`hf:owner/name`) is downloaded on the driver first.
   The first `max_documents` documents are kept (source order: file order, then record order).
2. split: np.random.default_rng(seed).permutation(N); its first round(validation_fraction * N)
   documents (at least 1 when the fraction is above 0, at most N - 1) are validation (the
   `test` split of the layout), the rest train; each split keeps source order.
3. tokenizer: bytes, or BPE trained here, on the driver, over the train split's documents (the
   validation text stays unseen, so its loss is a fair held-out measure).
4. tokenize: one task per chunk of documents, the tokenizer sent as its JSON; each document
   becomes [BOS] + tokens + [EOS], and a split's documents are concatenated in order.
5. pack: windows of S+1 tokens with stride S (inputs w[:S], labels w[1:]), the last one padded
   with PAD (0, an ignored label); one window is one example, one puzzle and one group, so the
   training loader samples windows uniformly. Written by trm_ray.data.writer.DatasetWriter
   (local folder or URI, commit marker, nothing left behind on error) with tokenizer.json and
   text.json (trm_ray/text/info.py) at the root, hashed and published with the rest.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from trm_ray import storage
from trm_ray.data.builder import FORMAT_VERSION, _versions, build_session, local_cpus, ordered_map, ray_at_hand
from trm_ray.data.sources import DatasetBuildError
from trm_ray.data.writer import DatasetWriter
from trm_ray.errors import first_line
from trm_ray.text import records as R
from trm_ray.text import stories
from trm_ray.text.info import SPLIT_NAMES, TextInfo, tokenizer_info
from trm_ray.text.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TEXT_INFO_FILE,
    TOKENIZER_FILE,
    TextTokenizer,
    parse_tokenizer_spec,
)

KIND = "text"
HUB_PREFIX = "hf:"
GENERATE_PREFIX = "generate:"
DEFAULT_NUM_DOCUMENTS = 2000
# What `trm-ray data build text` uses for an option not given (the command line reads these).
DEFAULT_TOKENIZER, DEFAULT_VALIDATION_FRACTION, DEFAULT_SEED = "byte", 0.05, 0
# Documents per generating task, and characters per tokenizing task (a few MB of text: large
# enough to repay a task's start, small enough to spread a corpus over the CPUs).
GENERATE_CHUNK = 500
TOKENIZE_CHUNK_CHARS = 1 << 22
# Below this many characters a local build tokenizes in this process: a pool's start and the
# pipe back cost more than they save.
POOL_MIN_CHARS = 1 << 23
# Data files a hub dataset repo is read from, by preference: the first kind it has is used.
HUB_KINDS = (R.PARQUET, R.JSONL, R.JSON, R.TXT)
HUB_METADATA_FILES = ("dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json")
# Generated documents from which a local build generates in worker processes.
POOL_MIN_GENERATED = 20_000


# ---------------------------------------------------------------------------------------------
# Checks of the options (before any work)
# ---------------------------------------------------------------------------------------------
def _check_options(input_paths: Sequence[str], source: Optional[str], max_sequence_length: int, tokenizer: str,
                   validation_fraction: float, num_documents: Optional[int], max_documents: Optional[int]
                   ) -> tuple[str, Optional[int]]:
    if max_sequence_length is None or max_sequence_length < 2:
        raise DatasetBuildError(
            f"--max-sequence-length {max_sequence_length} is too small: a window must hold at least 2 tokens, "
            f"one to read and the next to predict from it; use e.g. 128")
    try:
        kind, vocab = parse_tokenizer_spec(tokenizer)
    except ValueError as error:
        raise DatasetBuildError(str(error)) from None
    if not 0 <= validation_fraction < 1:
        raise DatasetBuildError(f"--validation-fraction {validation_fraction} must be at least 0 and below 1 "
                                f"(e.g. 0.05): the train split needs documents")
    if bool(input_paths) == bool(source):
        raise DatasetBuildError("a text build reads --input-paths FILE... or --source "
                                "hf:<repo>|generate:stories|generate:chat: give exactly one of them")
    if source and not source.startswith((HUB_PREFIX, GENERATE_PREFIX)):
        raise DatasetBuildError(f"--source {source!r} is not a text source: use hf:<owner>/<name> (a Hugging Face "
                                f"dataset repo), generate:stories or generate:chat, or --input-paths for files")
    if source and source.startswith(GENERATE_PREFIX) and source[len(GENERATE_PREFIX):] not in stories.KINDS:
        raise DatasetBuildError(f"--source {source!r}: the built-in generators are "
                                f"{', '.join(GENERATE_PREFIX + k for k in stories.KINDS)}")
    if source and source.startswith(HUB_PREFIX) and source[len(HUB_PREFIX):].split("@")[0].count("/") != 1:
        raise DatasetBuildError(f"--source {source!r}: a hub source is hf:<owner>/<name>[@revision] "
                                f"(e.g. hf:roneneldan/TinyStories)")
    if num_documents is not None and not (source or "").startswith(GENERATE_PREFIX):
        raise DatasetBuildError("--num-documents sets how many documents a generator writes: use it with "
                                "--source generate:stories or generate:chat (--max-documents keeps the first N of files)")
    for name, value in (("--num-documents", num_documents), ("--max-documents", max_documents)):
        if value is not None and value < 1:
            raise DatasetBuildError(f"{name} {value} must be at least 1")
    return kind, vocab


def _check_inputs(input_paths: Sequence[str]) -> list[str]:
    """Every input file exists (a missing one fails before Ray starts)."""
    paths = [os.fspath(p) for p in input_paths]
    for path in paths:
        try:
            if storage.is_dir(path):
                raise DatasetBuildError(f"input {path!r} is a folder: name the JSON/JSONL files in it "
                                        f"(e.g. --input-paths {path.rstrip('/')}/*.jsonl)")
            if not storage.is_file(path):
                raise DatasetBuildError(f"input {path!r} does not exist: check --input-paths")
        except storage.StorageError as error:
            raise DatasetBuildError(f"input {error}") from None
    return paths


# ---------------------------------------------------------------------------------------------
# Tasks (module level, so that Ray and worker processes pickle them by reference)
# ---------------------------------------------------------------------------------------------
def _read_task(item: tuple[str, bool]) -> tuple[Optional[list[str]], Optional[str]]:
    return R.read_documents_task(*item)


def _generate_task(item: tuple[str, int, int, int, bool]) -> tuple[Optional[list[str]], Optional[str]]:
    kind, start, count, seed, lowercase = item
    documents = [R.render_record(record, f"generate:{kind}[{start + k}]")
                 for k, record in enumerate(stories.generate_records(kind, start, count, seed))]
    return ([d.lower() for d in documents] if lowercase else documents), None


@functools.lru_cache(maxsize=2)
def _tokenizer(text: str) -> TextTokenizer:
    return TextTokenizer.from_json(text)


def _tokenize_task(item: tuple[str, list[str]]) -> np.ndarray:
    """The documents' tokens, each document [BOS] + tokens + [EOS], concatenated."""
    tokenizer_json, texts = item
    encoded = _tokenizer(tokenizer_json).encode_batch(texts)
    stream = np.empty(sum(len(ids) + 2 for ids in encoded), dtype=np.int32)
    at = 0
    for ids in encoded:
        stream[at] = BOS_ID
        stream[at + 1:at + 1 + len(ids)] = ids
        stream[at + 1 + len(ids)] = EOS_ID
        at += len(ids) + 2
    return stream


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _collect(results: Iterable[tuple[Optional[list[str]], Optional[str]]], limit: Optional[int]) -> list[str]:
    documents: list[str] = []
    for docs, error in results:
        if error is not None:
            raise DatasetBuildError(error)
        documents.extend(docs)
        if limit is not None and len(documents) >= limit:
            break
    return documents[:limit] if limit is not None else documents


def _hub_documents(source: str, lowercase: bool, limit: Optional[int]) -> tuple[list[str], str]:
    """Documents of a Hugging Face dataset repo and the source as pinned (hf:owner/name@commit).
    Files are fetched one by one and only until `limit` documents are read, so a recipe can take
    a subset of a large corpus. HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE=1 (the cache
    only) apply as for any hub download."""
    repo_id, _, revision = source[len(HUB_PREFIX):].partition("@")
    revision = revision or None
    hint = ("check the id and the connection (HF_ENDPOINT, HF_TOKEN), or use --input-paths with local files or "
            "--source generate:stories")
    try:
        from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

        if constants.HF_HUB_OFFLINE:
            folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)
            commit = os.path.basename(os.path.normpath(folder))
            names = sorted(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                           for root, _, files in os.walk(folder) for f in files)

            def fetch(name: str) -> str:
                return os.path.join(folder, name)
        else:
            api = HfApi()
            commit = api.dataset_info(repo_id, revision=revision).sha
            names = sorted(api.list_repo_files(repo_id, repo_type="dataset", revision=commit))

            def fetch(name: str) -> str:
                # By the revision as given (not the commit), so the cache records the branch -> commit
                # ref and the same --source works again with HF_HUB_OFFLINE=1; the file must still
                # come from the commit that was listed (a branch that moved meanwhile is an error).
                path = hf_hub_download(repo_id, name, repo_type="dataset", revision=revision or "main")
                if not os.path.normpath(path).endswith(os.path.join("snapshots", commit, *name.split("/"))):
                    raise DatasetBuildError(f"dataset {repo_id!r} changed on the hub during the build (revision "
                                            f"{revision or 'main'} is no longer commit {commit}): run it again, or "
                                            f"pin a commit with --source hf:{repo_id}@<commit>")
                return path
    except ImportError:  # pragma: no cover - a dependency of trm-ray
        raise DatasetBuildError("--source hf:... needs huggingface_hub: pip install huggingface_hub") from None
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, no permission: all end the same way
        offline = " (HF_HUB_OFFLINE=1 and it is not in the Hugging Face cache)" if _offline() else ""
        raise DatasetBuildError(f"cannot fetch dataset {repo_id!r} from the Hugging Face hub{offline} "
                                f"({first_line(error)}): {hint}") from None
    data = [n for n in names if not storage.name_of(n).startswith(".") and storage.name_of(n) not in HUB_METADATA_FILES]
    kind = next((k for k in HUB_KINDS if any(n.lower().endswith(k) for n in data)), None)
    if kind is None:
        raise DatasetBuildError(f"dataset {repo_id!r} on the hub has no {'/'.join(k[1:] for k in HUB_KINDS)} data "
                                f"files: use another repo, or --input-paths with local files")
    documents: list[str] = []
    for name in (n for n in data if n.lower().endswith(kind)):
        try:
            path = fetch(name)
        except DatasetBuildError:
            raise
        except Exception as error:  # noqa: BLE001 - as above
            raise DatasetBuildError(f"cannot fetch {name} of dataset {repo_id!r} from the Hugging Face hub "
                                    f"({first_line(error)}): {hint}") from None
        documents.extend(R.read_documents(path, lowercase))
        if limit is not None and len(documents) >= limit:
            break
    return documents[:limit] if limit is not None else documents, f"{HUB_PREFIX}{repo_id}@{commit}"


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


# ---------------------------------------------------------------------------------------------
# Split and pack
# ---------------------------------------------------------------------------------------------
def split_documents(num_documents: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), each in source order (see the module docstring)."""
    order = np.random.default_rng(seed).permutation(num_documents)
    wanted = round(validation_fraction * num_documents)
    if validation_fraction > 0 and num_documents >= 2:
        wanted = min(max(wanted, 1), num_documents - 1)
    validation = np.sort(order[:wanted])
    train = np.sort(order[wanted:])
    return train, validation


def pack_windows(streams: Iterable[np.ndarray], seq_len: int) -> Iterator[np.ndarray]:
    """Windows (n, S+1) of the concatenated token streams, stride S; the last one padded with PAD.
    Taken as the streams arrive, so only one chunk is in memory at a time."""
    leftover = np.zeros(0, np.int32)
    for stream in streams:
        buffer = np.concatenate([leftover, stream]) if leftover.size else stream
        full = (buffer.size - 1) // seq_len if buffer.size else 0
        if full:
            windows = np.lib.stride_tricks.sliding_window_view(buffer, seq_len + 1)[::seq_len][:full]
            yield windows
        leftover = buffer[full * seq_len:]
    if leftover.size >= 2:  # labels left: one more window (a single token was the last label already)
        last = np.full(seq_len + 1, PAD_ID, np.int32)
        last[:leftover.size] = leftover
        yield last[None]


def _chunks(texts: list[str], max_chars: int) -> list[list[str]]:
    chunks, current, size = [], [], 0
    for text in texts:
        current.append(text)
        size += len(text)
        if size >= max_chars:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


@contextlib.contextmanager
def _quiet_tokenizers_fork(active: bool) -> Iterator[None]:
    """The tokenizers library warns on every fork after it used its threads (BPE training did);
    worker processes tokenize on their own, so its threads are switched off for the pool."""
    key = "TOKENIZERS_PARALLELISM"
    previous = os.environ.get(key)
    if active and previous is None:
        os.environ[key] = "false"
    try:
        yield
    finally:
        if active and previous is None:
            os.environ.pop(key, None)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def build_text_dataset(
    *,
    input_paths: Sequence[str] = (),
    source: Optional[str] = None,
    output_dir: str,
    max_sequence_length: int,
    lowercase: bool = False,
    tokenizer: str = DEFAULT_TOKENIZER,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = DEFAULT_SEED,
    num_documents: Optional[int] = None,
    max_documents: Optional[int] = None,
    overwrite: bool = False,
    use_ray: Optional[bool] = None,
    num_cpus: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Build a text dataset into `output_dir` (a local folder or a filesystem URI); returns build.json's
    content. use_ray/num_cpus as for trm_ray.data.builder.build_dataset: True, Ray Data tasks;
    False, this machine's processes (num_cpus of them, 1: this process); None, Ray Data when a Ray
    cluster is at hand. Same bytes either way. Bad input raises DatasetBuildError (one line) and
    leaves no output folder."""
    input_paths = list(input_paths or ())
    spec_kind, bpe_vocab = _check_options(input_paths, source, max_sequence_length, tokenizer, validation_fraction,
                                          num_documents, max_documents)
    seq_len = int(max_sequence_length)
    if source is None:
        input_paths = _check_inputs(input_paths)
    if use_ray is None:
        use_ray = ray_at_hand()
    started = time.perf_counter()
    cpus = 1 if use_ray else max(1, num_cpus or local_cpus())
    processes = 1
    with DatasetWriter(output_dir, use_identifiers=False, overwrite=overwrite) as writer:
        with build_session(use_ray, num_cpus):
            # 1. read
            if source is not None and source.startswith(HUB_PREFIX):
                documents, pinned = _hub_documents(source, lowercase, max_documents)
                sources = [pinned]
            elif source is not None:
                kind = source[len(GENERATE_PREFIX):]
                wanted = num_documents or DEFAULT_NUM_DOCUMENTS
                if max_documents is not None:
                    wanted = min(wanted, max_documents)
                items = [(kind, start, min(GENERATE_CHUNK, wanted - start), seed, lowercase)
                         for start in range(0, wanted, GENERATE_CHUNK)]
                documents = _collect(ordered_map(_generate_task, items, batch_size=1, use_ray=use_ray,
                                                 processes=cpus if wanted >= POOL_MIN_GENERATED else 1), None)
                sources = [f"{source} (seed {seed}, {wanted} documents)"]
            else:
                items = [(path, lowercase) for path in input_paths]
                documents = _collect(ordered_map(_read_task, items, batch_size=1, use_ray=use_ray,
                                                 processes=min(cpus, len(items))), max_documents)
                sources = list(input_paths)
            if not documents:
                raise DatasetBuildError(f"no documents in {', '.join(sources)}: the corpus is empty; give files with "
                                        f"records (JSON Lines or a JSON array of {{'text'}} / {{'messages'}} objects)")
            if len(documents) < 2 and validation_fraction > 0:
                raise DatasetBuildError("the corpus has 1 document: a validation split needs 2 at least; add "
                                        "documents or pass --validation-fraction 0")
            # 2. split
            train_index, validation_index = split_documents(len(documents), validation_fraction, seed)
            parts = {"train": [documents[i] for i in train_index], "test": [documents[i] for i in validation_index]}
            del documents
            # 3. tokenizer
            if spec_kind == "bpe":
                text_tokenizer = TextTokenizer.train_bpe(parts["train"], bpe_vocab)
            else:
                text_tokenizer = TextTokenizer.byte()
            tokenizer_json = text_tokenizer.to_json()
            writer.set_shape(seq_len=seq_len, vocab_size=text_tokenizer.vocab_size)
            # 4, 5. tokenize and pack
            total_chars = sum(len(t) for texts in parts.values() for t in texts)
            if not use_ray and cpus > 1 and total_chars >= POOL_MIN_CHARS:
                processes = cpus
            stats = {}
            with _quiet_tokenizers_fork(processes > 1 and spec_kind == "bpe"):
                for split, texts in parts.items():
                    stats[split] = _write_split(writer, split, texts, tokenizer_json, seq_len, use_ray, processes)
        # The tokenizer and text.json sit in the staging folder, so finish() hashes and publishes them.
        with open(os.path.join(writer.staging, TOKENIZER_FILE), "w") as f:
            f.write(tokenizer_json)
        text_info = TextInfo(
            tokenizer=tokenizer_info(text_tokenizer),
            lowercase=lowercase,
            seq_len=seq_len,
            sources=sources,
            documents={SPLIT_NAMES[s]: stats[s]["documents"] for s in stats},
            tokens={SPLIT_NAMES[s]: stats[s]["tokens"] for s in stats},
            validation_fraction=validation_fraction,
            seed=seed,
            extra={"tokenizer_spec": tokenizer, "windows": {SPLIT_NAMES[s]: stats[s]["windows"] for s in stats},
                   "num_documents": num_documents, "max_documents": max_documents},
        )
        with open(os.path.join(writer.staging, TEXT_INFO_FILE), "w") as f:
            f.write(text_info.to_json())
        info = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "seed": seed,
            "text": text_info.model_dump(mode="json"),
            "versions": _versions(),
        }
        info = writer.finish(info)
    if log is not None:
        counts = "; ".join(f"{SPLIT_NAMES[s]} {c['documents']} documents / {c['windows']} windows / {c['tokens']} tokens"
                           for s, c in stats.items())
        where = "Ray Data" if use_ray else f"{processes} processes" if processes > 1 else "this process"
        log(f"built {output_dir}: {counts}; seq_len {seq_len}, vocab {text_tokenizer.vocab_size} ({text_tokenizer.kind}); "
            f"{time.perf_counter() - started:.1f} s on {where}; content sha256 {info['content_sha256'][:16]}")
    return info


def _write_split(writer: DatasetWriter, split: str, texts: list[str], tokenizer_json: str, seq_len: int,
                 use_ray: bool, processes: int) -> dict[str, int]:
    """Tokenize, pack and write one split; its counts."""
    if not texts:
        return {"documents": 0, "windows": 0, "tokens": 0}
    items = [(tokenizer_json, chunk) for chunk in _chunks(texts, TOKENIZE_CHUNK_CHARS)]
    counted = {"tokens": 0}

    def streams() -> Iterator[np.ndarray]:
        for stream in ordered_map(_tokenize_task, items, batch_size=1, use_ray=use_ray, processes=processes):
            counted["tokens"] += int(stream.size)
            yield stream

    windows = 0
    for block in pack_windows(streams(), seq_len):
        writer.add_examples(split, block[:, :seq_len], block[:, 1:])
        windows += block.shape[0]
    return {"documents": len(texts), "windows": windows, "tokens": counted["tokens"]}


__all__ = ["build_text_dataset", "split_documents", "pack_windows", "DEFAULT_NUM_DOCUMENTS"]
