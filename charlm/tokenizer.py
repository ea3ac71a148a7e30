"""Tokenizers behind one interface: text <-> integer ids, and their files in a run directory.

Three kinds:
  char           Unicode code points seen in the training split; id 0 is reserved for
                 symbols never seen there (they encode to it and decode to U+FFFD).
  byte           UTF-8 bytes, vocabulary 256; every text encodes, nothing is unknown.
  sentencepiece  a unigram or BPE model trained on the training split with options that
                 round-trip text exactly (identity normalisation, byte fallback, "\\n" kept).

Every tokenizer also gives the bytes each id stands for (`token_bytes`), so a streaming
decoder can turn ids into text one at a time even when a character spans several ids.
All kinds are saved as tokenizer.json (plus tokenizer.model for sentencepiece) and loaded
with `load_tokenizer`, which never executes anything from the files.
"""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np

from .atomic import atomic_write_bytes
from .errors import CharlmError

TOKENIZER_FILE = "tokenizer.json"
SPM_MODEL_FILE = "tokenizer.model"
FORMAT_VERSION = 1
UNKNOWN_CHAR = "\ufffd"
MAX_CODE_POINT = 0x10FFFF

IdsLike = Union[Sequence[int], np.ndarray]


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    unk_id: Optional[int]

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: IdsLike) -> str: ...

    def token_bytes(self) -> list[bytes]: ...

    def save(self, directory: Path) -> None: ...


def _ids_array(ids: IdsLike) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def _code_points(text: str) -> np.ndarray:
    # One vectorised pass instead of a Python loop per character.
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


class CharTokenizer:
    """Unicode code points; id 0 is the unknown symbol, ids 1.. the sorted known code points."""

    kind = "char"
    unk_id: Optional[int] = 0

    def __init__(self, code_points: Iterable[int]):
        chars = np.unique(np.fromiter((int(c) for c in code_points), dtype=np.int64))
        if chars.size and (chars[0] < 0 or chars[-1] > MAX_CODE_POINT):
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
        return [chr(int(cp)).encode("utf-8", errors="surrogatepass") for cp in self._decode_table]

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
        return np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8).copy()

    def decode(self, ids: IdsLike) -> str:
        arr = _ids_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise CharlmError("token id out of range for the byte vocabulary of 256")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def token_bytes(self) -> list[bytes]:
        return [bytes([i]) for i in range(256)]

    def save(self, directory: Path) -> None:
        _write_json(Path(directory) / TOKENIZER_FILE, {"kind": self.kind, "version": FORMAT_VERSION})


# SentencePiece drops anything over max_sentence_length (4192 bytes by default); keep well under.
SPM_CHUNK_BYTES = 4000
SPM_TRAINING_OPTIONS = dict(
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    user_defined_symbols=["\n"],
    byte_fallback=True,
    character_coverage=1.0,
    allow_whitespace_only_pieces=True,
    split_digits=False,
    hard_vocab_limit=False,
    bos_id=-1,
    eos_id=-1,
    unk_id=0,
    input_sentence_size=2_000_000,
    shuffle_input_sentence=True,
    max_sentence_length=4192,
    minloglevel=2,
)


def spm_sentences(chunks: Iterable[str], max_bytes: int = SPM_CHUNK_BYTES) -> Iterator[str]:
    """Regroup text into pieces under max_bytes, cut after newlines where possible."""
    pending: list[str] = []
    pending_bytes = 0
    for chunk in chunks:
        for line in chunk.splitlines(keepends=True):
            size = len(line.encode("utf-8", errors="surrogatepass"))
            if size > max_bytes:
                if pending:
                    yield "".join(pending)
                    pending, pending_bytes = [], 0
                step = max_bytes // 4  # a code point is at most 4 bytes in UTF-8
                for start in range(0, len(line), step):
                    yield line[start : start + step]
                continue
            if pending_bytes + size > max_bytes:
                yield "".join(pending)
                pending, pending_bytes = [], 0
            pending.append(line)
            pending_bytes += size
    if pending:
        yield "".join(pending)


class SentencePieceTokenizer:
    """A SentencePiece model (unigram or BPE) that round-trips text exactly."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_proto)
        except Exception as exc:  # sentencepiece raises bare RuntimeError/OSError
            raise CharlmError(f"sentencepiece model is damaged ({exc}); retrain the tokenizer") from None
        self.vocab_size = int(self._sp.get_piece_size())
        self.unk_id = int(self._sp.unk_id())

    @classmethod
    def train(
        cls, chunks: Iterable[str], vocab_size: int, model_type: str = "unigram", threads: int = 1
    ) -> "SentencePieceTokenizer":
        import sentencepiece as spm

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=spm_sentences(chunks),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                num_threads=max(1, threads),
                **SPM_TRAINING_OPTIONS,
            )
        except RuntimeError as exc:
            raise CharlmError(
                f"sentencepiece training failed: {str(exc).strip().splitlines()[-1]}; "
                "try a smaller --vocab-size or a larger corpus"
            ) from None
        return cls(model.getvalue())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int64)

    def decode(self, ids: IdsLike) -> str:
        arr = _ids_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise CharlmError(f"token id out of range for a vocabulary of {self.vocab_size}")
        return self._sp.decode(arr.tolist())

    def token_bytes(self) -> list[bytes]:
        table = []
        for i in range(self.vocab_size):
            piece = self._sp.id_to_piece(i)
            if self._sp.is_byte(i):
                table.append(bytes([int(piece[3:5], 16)]))  # pieces look like <0xAB>
            elif self._sp.is_unknown(i):
                table.append(UNKNOWN_CHAR.encode("utf-8"))
            elif self._sp.is_control(i):
                table.append(b"")
            else:
                table.append(piece.replace("\u2581", " ").encode("utf-8"))
        return table

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        _write_bytes(directory / SPM_MODEL_FILE, self.model_proto)
        _write_json(
            directory / TOKENIZER_FILE,
            {"kind": self.kind, "version": FORMAT_VERSION, "model_file": SPM_MODEL_FILE},
        )


class StreamDecoder:
    """Turns ids into text one at a time, holding back bytes of an unfinished character."""

    def __init__(self, tokenizer: Tokenizer):
        self._bytes = tokenizer.token_bytes()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._bytes[token_id])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def build_tokenizer(
    kind: str,
    training_chunks: Iterable[str],
    vocab_size: int = 2000,
    spm_model_type: str = "unigram",
    threads: int = 1,
) -> Tokenizer:
    """Fit a tokenizer of the given kind on the training text (an iterable of chunks)."""
    if kind == "char":
        return CharTokenizer.fit(training_chunks)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(training_chunks, vocab_size, spm_model_type, threads)
    raise CharlmError(f"--tokenizer must be one of char, byte, sentencepiece (got {kind!r})")


def load_tokenizer(directory: Union[str, Path]) -> Tokenizer:
    """Load the tokenizer saved in a run directory."""
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharlmError(f"{path} is missing; this is not a complete charlm run directory") from None
    except (OSError, ValueError) as exc:
        raise CharlmError(f"{path} cannot be read ({exc}); the run directory is damaged") from None
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        raise CharlmError(f"{path} has an unsupported format; it was written by a different charlm")
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta.get("code_points", []))
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        model_path = directory / str(meta.get("model_file", SPM_MODEL_FILE))
        try:
            return SentencePieceTokenizer(model_path.read_bytes())
        except FileNotFoundError:
            raise CharlmError(f"{model_path} is missing; the run directory is damaged") from None
    raise CharlmError(f"{path} names an unknown tokenizer kind {kind!r}")


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
