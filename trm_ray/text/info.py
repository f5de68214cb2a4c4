"""`text.json`: what makes a dataset folder a text dataset, and its tokenizer.

A text dataset is an ordinary dataset folder (trm_ray/data/layout.py: `train/` and `test/`,
the latter holding the validation documents) plus two files at its root: `tokenizer.json`
(trm_ray/text/tokenizer.py) and `text.json` (TextInfo below), which names the tokenizer by
kind, vocabulary and sha256. A text run's checkpoints carry copies of both, so a checkpoint
alone is enough to generate.

    if is_text_dataset("data/tinystories"):
        info = load_text_info("data/tinystories")
        tokenizer = load_tokenizer("data/tinystories")   # checked against info
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trm_ray import storage
from trm_ray.data.layout import DatasetError, PathLike
from trm_ray.text.tokenizer import BOS_ID, EOS_ID, PAD_ID, TEXT_INFO_FILE, TOKENIZER_FILE, TextTokenizer

TEXT_FORMAT = "trm-ray-text"
TEXT_FORMAT_VERSION = 1
# The layout's split -> what text.json and the console call it: the held-out split holds the
# validation documents.
SPLIT_NAMES = {"train": "train", "test": "validation"}


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(TOKENIZER_FILE, description="The tokenizer's file, beside text.json.")
    kind: Literal["byte", "bpe"]
    vocab_size: int = Field(..., ge=BOS_ID + 2)
    sha256: str = Field(..., description="sha256 of the tokenizer file's bytes.")


class TextInfo(BaseModel):
    """text.json at a text dataset's root."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["trm-ray-text"] = TEXT_FORMAT
    version: int = TEXT_FORMAT_VERSION
    tokenizer: TokenizerInfo
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    lowercase: bool = False
    seq_len: int = Field(..., ge=2, description="S: tokens per window.")
    packing: Literal["pack"] = Field("pack", description="Documents joined with BOS/EOS and cut into S+1 windows.")
    sources: list[str] = Field(default_factory=list, description="Input files, hub id or generator.")
    documents: dict[str, int] = Field(default_factory=dict, description="Documents per split (train, validation).")
    tokens: dict[str, int] = Field(default_factory=dict, description="Tokens per split, BOS/EOS included.")
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    extra: dict[str, Any] = Field(default_factory=dict, description="Builder details (generator settings, ...).")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def is_text_dataset(folder: PathLike) -> bool:
    """A dataset folder (or a checkpoint folder) with text.json."""
    try:
        return storage.is_file(storage.join(folder, TEXT_INFO_FILE))
    except OSError:
        return False


def load_text_info(folder: PathLike) -> TextInfo:
    path = storage.join(folder, TEXT_INFO_FILE)
    try:
        data = storage.read_text(path)
    except (OSError, storage.StorageError):
        raise DatasetError(f"{path!r} does not exist: {str(folder)!r} is not a text dataset "
                           f"(build one with `trm-ray data build text`)") from None
    try:
        return TextInfo.model_validate_json(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors())
        raise DatasetError(f"{path!r} is malformed ({problems}): rebuild the dataset") from None


def load_tokenizer(folder: PathLike, expected: Optional[TextInfo] = None) -> TextTokenizer:
    """The tokenizer at `folder` (a text dataset or a text run's checkpoint), checked against
    `expected` (default: the folder's own text.json): same file bytes (sha256) and vocabulary."""
    info = expected if expected is not None else load_text_info(folder)
    path = storage.join(folder, info.tokenizer.file)
    try:
        raw = storage.read_bytes(path)
    except (OSError, storage.StorageError):
        raise DatasetError(f"tokenizer {path!r} does not exist: rebuild the dataset with `trm-ray data build text`") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != info.tokenizer.sha256:
        raise DatasetError(f"tokenizer {path!r} does not match the dataset (sha256 {digest[:12]}, text.json says "
                           f"{info.tokenizer.sha256[:12]}): use the tokenizer.json the dataset was built with, or rebuild it")
    try:
        tokenizer = TextTokenizer.from_json(raw.decode("utf-8", errors="replace"), what=f"tokenizer {path!r}")
    except ValueError as error:
        raise DatasetError(str(error)) from None
    if tokenizer.vocab_size != info.tokenizer.vocab_size or tokenizer.kind != info.tokenizer.kind:
        raise DatasetError(f"tokenizer {path!r} ({tokenizer.kind}, {tokenizer.vocab_size} ids) does not match the "
                           f"dataset ({info.tokenizer.kind}, {info.tokenizer.vocab_size} ids): rebuild the dataset")
    return tokenizer


def tokenizer_info(tokenizer: TextTokenizer) -> TokenizerInfo:
    """The text.json entry of `tokenizer` as it is written to tokenizer.json (to_json's bytes)."""
    return TokenizerInfo(kind=tokenizer.kind, vocab_size=tokenizer.vocab_size, sha256=tokenizer.sha256())


__all__ = ["TEXT_INFO_FILE", "TOKENIZER_FILE", "TextInfo", "TokenizerInfo", "is_text_dataset", "load_text_info",
           "load_tokenizer", "tokenizer_info"]


def check_text_task(config) -> None:
    """A run on text datasets needs a causal model and one tokenizer, matching its text.json; a
    TrainConfig whose datasets are all puzzles passes untouched. Raises ConfigError or
    DatasetError (one line)."""
    from trm_ray.config import ConfigError

    paths = list(dict.fromkeys([*config.data_paths, *config.eval_paths]))
    text = {path: load_text_info(path) for path in paths if is_text_dataset(path)}
    if not text:
        return
    if len(text) < len(paths):
        puzzles = next(p for p in paths if p not in text)
        raise ConfigError(f"data paths mix text datasets ({next(iter(text))}) with a puzzle dataset ({puzzles}); "
                          f"train on one kind")
    for path, info in text.items():
        load_tokenizer(path, info)  # a tokenizer.json that does not match text.json: one line now, not in a worker
    digests = {info.tokenizer.sha256 for info in text.values()}
    if len(digests) > 1:
        raise ConfigError(f"the text datasets {', '.join(text)} were built with different tokenizers; build them "
                          f"with one (the same --tokenizer on the same corpus, or byte)")
    if not config.arch.causal:
        raise ConfigError(f"{next(iter(text))} is a text dataset: its labels are the next tokens, which a model "
                          f"without a causal mask can see; set arch.causal=true")
