"""Tokenizers of text datasets: bytes, or BPE trained on the corpus (the `tokenizers` library).

    tok = TextTokenizer.byte()                        # 259 ids: PAD, BOS, EOS, then the 256 bytes
    tok = TextTokenizer.train_bpe(texts, 4096)        # byte-level BPE, the same three specials first
    ids = tok.encode("Once upon a time")              # no specials added
    tok.decode(ids) == "Once upon a time"
    TextTokenizer.from_json(tok.to_json())            # what tokenizer.json beside the data holds

Every tokenizer puts PAD, BOS and EOS at 0, 1 and 2, so the dataset's pad_id and
ignore_label_id can be 0 as for the puzzle datasets: a PAD label is never a target.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Optional, Sequence

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2
BYTE_OFFSET = len(SPECIAL_TOKENS)  # byte b is id BYTE_OFFSET + b
BYTE_VOCAB_SIZE = BYTE_OFFSET + 256
# The files a text dataset keeps at its root (and a text run's checkpoints beside model.pt).
TOKENIZER_FILE = "tokenizer.json"
TEXT_INFO_FILE = "text.json"
TOKENIZER_KINDS = ("byte", "bpe")


def parse_tokenizer_spec(spec: str) -> tuple[str, Optional[int]]:
    """'byte' -> ('byte', None); 'bpe:4096' -> ('bpe', 4096). ValueError with one line otherwise."""
    kind, _, size = str(spec).strip().partition(":")
    if kind == "byte" and not size:
        return "byte", None
    if kind == "bpe":
        try:
            vocab = int(size)
        except ValueError:
            vocab = -1
        if vocab < BYTE_VOCAB_SIZE:
            raise ValueError(f"--tokenizer {spec!r}: a BPE vocabulary holds the 3 special tokens and the 256 bytes "
                             f"at least; use bpe:N with N >= {BYTE_VOCAB_SIZE} (e.g. bpe:4096)")
        return "bpe", vocab
    raise ValueError(f"--tokenizer {spec!r} is not a tokenizer: use byte, or bpe:N to train an N-token BPE "
                     f"on the corpus (e.g. bpe:4096)")


class TextTokenizer:
    """One interface over the two kinds; build it with `byte()`, `train_bpe()` or `from_json()`."""

    def __init__(self, kind: str, vocab_size: int, bpe=None):
        self.kind = kind
        self.vocab_size = vocab_size
        self._bpe = bpe  # a tokenizers.Tokenizer for kind "bpe"

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def byte(cls) -> "TextTokenizer":
        return cls("byte", BYTE_VOCAB_SIZE)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> "TextTokenizer":
        """Byte-level BPE of at most `vocab_size` ids trained on `texts` (the same texts give the
        same tokenizer: the trainer breaks ties between equally frequent pairs by the pair)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < BYTE_VOCAB_SIZE:
            raise ValueError(f"BPE vocabulary {vocab_size} < {BYTE_VOCAB_SIZE}: it must hold the specials and the 256 bytes")
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen in the corpus or not
        )
        bpe.train_from_iterator(texts, trainer)
        return cls._checked_bpe(bpe, "the trained BPE")

    @classmethod
    def _checked_bpe(cls, bpe, what: str) -> "TextTokenizer":
        for wanted, token in enumerate(SPECIAL_TOKENS):
            if bpe.token_to_id(token) != wanted:
                raise ValueError(f"{what} does not have {token} at id {wanted}: it is not a trm-ray text tokenizer")
        return cls("bpe", bpe.get_vocab_size(with_added_tokens=True), bpe)

    @classmethod
    def from_json(cls, text: str, what: str = "tokenizer") -> "TextTokenizer":
        """Parse what `to_json` wrote. ValueError (one line) for anything else."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{what} is not valid JSON ({error})") from None
        if isinstance(data, dict) and data.get("kind") == "byte":
            if data.get("vocab_size") != BYTE_VOCAB_SIZE:
                raise ValueError(f"{what}: a byte tokenizer has {BYTE_VOCAB_SIZE} ids, not {data.get('vocab_size')}")
            return cls.byte()
        if isinstance(data, dict) and "model" in data:
            from tokenizers import Tokenizer

            try:
                bpe = Tokenizer.from_str(text)
            except Exception as error:  # noqa: BLE001 - the library raises plain Exception subclasses
                raise ValueError(f"{what} is not a tokenizer the tokenizers library reads ({error})") from None
            return cls._checked_bpe(bpe, what)
        raise ValueError(f"{what} is neither a byte tokenizer nor a BPE tokenizer file")

    def to_json(self) -> str:
        if self.kind == "byte":
            return json.dumps({"kind": "byte", "vocab_size": BYTE_VOCAB_SIZE, "pad_id": PAD_ID, "bos_id": BOS_ID,
                               "eos_id": EOS_ID}, sort_keys=True)
        return self._bpe.to_str()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # -- use --------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.kind == "byte":
            return [BYTE_OFFSET + b for b in text.encode("utf-8")]
        return self._bpe.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.kind == "byte":
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._bpe.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; the specials are skipped and bytes that are not UTF-8 become U+FFFD."""
        ids = [int(i) for i in ids if int(i) >= BYTE_OFFSET]
        if self.kind == "byte":
            return bytes(i - BYTE_OFFSET for i in ids if i < BYTE_VOCAB_SIZE).decode("utf-8", errors="replace")
        return self._bpe.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"TextTokenizer({self.kind}, vocab_size={self.vocab_size})"
