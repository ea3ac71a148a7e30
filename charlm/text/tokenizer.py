"""Tokenizers behind one interface: text <-> integer ids, and their files in a run directory.

Three kinds:
  char           Unicode code points seen in the training split; id 0 is reserved for
                 symbols never seen there (they encode to it and decode to U+FFFD).
  byte           UTF-8 bytes, vocabulary 256; every text encodes, nothing is unknown.
  sentencepiece  a unigram or BPE model trained on the training split with options that
                 round-trip text exactly (identity normalisation, byte fallback, "\\n" kept).

Every tokenizer also gives the bytes each id stands for (`token_bytes`), so a streaming
decoder can turn ids into text one at a time even when a character spans several ids; for
every kind, decode(ids) is those bytes decoded as UTF-8 (bad bytes as U+FFFD), so it agrees
with the streaming decoder. encode refuses a str holding a lone surrogate (not Unicode text).
All kinds are saved as tokenizer.json (plus tokenizer.model for sentencepiece) and loaded
with `load_tokenizer`, which never executes anything from the files.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol, Sequence, Union

import numpy as np

from charlm.errors import CharlmError, OptionError
from charlm.files import (
    SPM_MODEL_LIMIT,
    TOKENIZER_JSON_LIMIT,
    atomic_write_bytes,
    plain_file_name,
    read_bytes,
    read_json,
)

TOKENIZER_FILE = "tokenizer.json"
SPM_MODEL_FILE = "tokenizer.model"
FORMAT_VERSION = 1
UNKNOWN_CHAR = "\ufffd"
MAX_CODE_POINT = 0x10FFFF

IdsLike = Union[Sequence[int], np.ndarray]
TextFactory = Callable[[], Iterable[str]]  # gives a fresh pass over a text each time it is called


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    unk_id: Optional[int]

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: IdsLike) -> str: ...

    def token_bytes(self) -> list[bytes]: ...

    def save(self, directory: Path) -> None: ...


def _ids_array(ids: IdsLike) -> np.ndarray:
    try:
        return np.asarray(ids, dtype=np.int64).reshape(-1)
    except OverflowError:  # an id past int64 cannot be in any vocabulary
        raise CharlmError("token id out of range: larger than any vocabulary") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_unicode(text: str) -> CharlmError:
    """The error for a str holding a lone surrogate: not Unicode text, so it has no UTF-8
    (Python makes them from undecodable bytes in command-line arguments, and json.loads
    from escapes such as "\\ud800")."""
    found = _SURROGATE.search(text)
    where = f"character {found.start()} is U+{ord(found.group()):04X}, " if found else ""
    return CharlmError(
        f"the text is not valid Unicode: {where}a lone surrogate (from bytes that are not UTF-8, "
        "or a \\u escape in JSON); give UTF-8 text"
    )


def _code_points(text: str) -> np.ndarray:
    # One vectorised pass instead of a Python loop per character.
    try:
        data = text.encode("utf-32-le")
    except UnicodeEncodeError:
        raise _not_unicode(text) from None
    return np.frombuffer(data, dtype="<u4")


class CharTokenizer:
    """Unicode code points; id 0 is the unknown symbol, ids 1.. the sorted known code points."""

    kind = "char"
    unk_id: Optional[int] = 0

    def __init__(self, code_points: Iterable[int]):
        chars = np.unique(np.fromiter((int(c) for c in code_points), dtype=np.int64))
        surrogates = (chars >= 0xD800) & (chars <= 0xDFFF)
        if chars.size and (chars[0] < 0 or chars[-1] > MAX_CODE_POINT or surrogates.any()):
            raise CharlmError("tokenizer file holds an invalid code point; the run directory is damaged")
        self.code_points = chars.astype(np.uint32)
        self.vocab_size = int(self.code_points.size) + 1
        self._decode_table = np.concatenate([[ord(UNKNOWN_CHAR)], self.code_points]).astype("<u4")
        self._encode_table: Optional[np.ndarray] = None

    @classmethod
    def fit(cls, chunks: Iterable[str]) -> "CharTokenizer":
        seen = np.zeros(0, dtype=np.uint32)
        for chunk in chunks:
            if chunk:
                seen = np.union1d(seen, np.unique(_code_points(chunk)))
        return cls(seen.tolist())

    def _table(self) -> np.ndarray:
        if self._encode_table is None:
            dtype = np.uint8 if self.vocab_size <= 256 else (np.uint16 if self.vocab_size <= 65536 else np.uint32)
            table = np.zeros(MAX_CODE_POINT + 1, dtype=dtype)  # 0 = unknown
            table[self.code_points] = np.arange(1, self.vocab_size, dtype=dtype)
            self._encode_table = table
        return self._encode_table

    def encode(self, text: str) -> np.ndarray:
        return self._table()[_code_points(text)]

    def decode(self, ids: IdsLike) -> str:
        arr = _ids_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise CharlmError(f"token id out of range for a vocabulary of {self.vocab_size}")
        return self._decode_table[arr].tobytes().decode("utf-32-le", errors="replace")

    def token_bytes(self) -> list[bytes]:
        return [chr(int(cp)).encode("utf-8") for cp in self._decode_table]

    def save(self, directory: Path) -> None:
        _write_json(
            Path(directory) / TOKENIZER_FILE,
            {"kind": self.kind, "version": FORMAT_VERSION, "code_points": self.code_points.tolist()},
        )


class ByteTokenizer:
    """UTF-8 bytes: vocabulary 256, no unknown symbol."""

    kind = "byte"
    vocab_size = 256
    unk_id: Optional[int] = None

    def encode(self, text: str) -> np.ndarray:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise _not_unicode(text) from None
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, ids: IdsLike) -> str:
        arr = _ids_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise CharlmError("token id out of range for the byte vocabulary of 256")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def token_bytes(self) -> list[bytes]:
        return [bytes([i]) for i in range(256)]

    def save(self, directory: Path) -> None:
        _write_json(Path(directory) / TOKENIZER_FILE, {"kind": self.kind, "version": FORMAT_VERSION})


class StreamDecoder:
    """Turns ids into text one at a time, holding back bytes of an unfinished character."""

    def __init__(self, tokenizer: Tokenizer):
        self._bytes = tokenizer.token_bytes()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._bytes):  # a negative id would index from the end
            raise CharlmError(f"token id out of range for a vocabulary of {len(self._bytes)}")
        return self._utf8.decode(self._bytes[token_id])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def build_tokenizer(
    kind: str,
    training_text: Union[Iterable[str], TextFactory],
    vocab_size: int = 2000,
    spm_model_type: str = "unigram",
    threads: int = 1,
) -> Tokenizer:
    """Fit a tokenizer on the training text: chunks, or a function giving a fresh pass over them."""
    if kind == "char":
        return CharTokenizer.fit(training_text() if callable(training_text) else training_text)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        from charlm.text.sentencepiece import SentencePieceTokenizer  # it builds on this module

        return SentencePieceTokenizer.train(training_text, vocab_size, spm_model_type, threads)
    raise OptionError("tokenizer", f"must be one of char, byte, sentencepiece (got {kind!r})")


def fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of what every id stands for: equal exactly when two tokenizers read ids alike."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(tokenizer.kind.encode())
    for data in tokenizer.token_bytes():
        digest.update(len(data).to_bytes(4, "little"))
        digest.update(data)
    return digest.hexdigest()


def same_tokenizer(a: Union[Tokenizer, str], b: Union[Tokenizer, str]) -> bool:
    """True when two tokenizers read every id alike; either may be given as its fingerprint
    (as config.json records it)."""
    return (a if isinstance(a, str) else fingerprint(a)) == (b if isinstance(b, str) else fingerprint(b))


def context_token_id(tokenizer: Tokenizer) -> int:
    """The token text is read as following when nothing precedes it: a newline, else a
    space, else the first known symbol. Generation starts from it and scoring conditions
    the first token on it, for every tokenizer alike."""
    unk = tokenizer.unk_id
    for text in ("\n", " "):
        ids = tokenizer.encode(text)
        if len(ids) and int(ids[0]) != unk:
            return int(ids[0])
    return 1 if unk == 0 and tokenizer.vocab_size > 1 else 0


def load_tokenizer(directory: Union[str, Path]) -> Tokenizer:
    """Load the tokenizer saved in a run directory, trusting nothing in its files.

    tokenizer.json is checked field by field; a sentencepiece model file must be a plain
    file name in the same folder (a crafted "../x" or "/dev/zero" is refused)."""
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    meta = read_json(path, TOKENIZER_JSON_LIMIT, "the run directory is incomplete: copy the whole run folder")
    if not isinstance(meta, dict):
        raise CharlmError(f"{path} is not a charlm tokenizer file; restore the run's own tokenizer.json")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CharlmError(
            f"{path} is not a charlm tokenizer file (no valid version); restore the run's own tokenizer.json"
        )
    if version > FORMAT_VERSION:
        raise CharlmError(
            f"{path} has tokenizer format {version}, newer than this charlm reads ({FORMAT_VERSION}); "
            "upgrade charlm to use this run"
        )
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(_code_point_list(meta.get("code_points"), path))
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        name = plain_file_name(meta.get("model_file", SPM_MODEL_FILE), path, "model_file")
        model_path = directory / name
        proto = read_bytes(model_path, SPM_MODEL_LIMIT, "the run directory is incomplete: copy the whole run folder")
        from charlm.text.sentencepiece import SentencePieceTokenizer  # it builds on this module

        try:
            return SentencePieceTokenizer(proto)
        except CharlmError:
            raise CharlmError(
                f"{model_path} is not a valid SentencePiece model (truncated or corrupt); "
                "restore the run's own file or retrain"
            ) from None
    raise CharlmError(
        f"{path} names an unknown tokenizer kind {kind!r} (this charlm knows char, byte, sentencepiece); "
        "upgrade charlm or restore the run's own tokenizer.json"
    )


def _code_point_list(values, path: Path) -> list[int]:
    """The code points of a saved char vocabulary: whole numbers, ascending, each a valid
    Unicode scalar value, as CharTokenizer.save writes them."""
    bad = None
    if not isinstance(values, list) or not values:
        bad = "code_points is not a non-empty list"
    else:
        previous = -1
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int):
                bad = f"code point {value!r} is not a whole number"
            elif not previous < value <= MAX_CODE_POINT or 0xD800 <= value <= 0xDFFF:
                bad = f"code point {value} is out of order, repeated, a surrogate or past U+10FFFF"
            if bad:
                break
            previous = value
    if bad:
        raise CharlmError(f"{path} holds an invalid vocabulary ({bad}); restore the run's own tokenizer.json")
    return values


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
