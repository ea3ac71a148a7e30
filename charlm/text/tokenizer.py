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
import io
import json
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np

from charlm.errors import CharlmError
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


WHITESPACE_MARK = "\u2581"  # SentencePiece's stand-in for a space inside pieces
# ids SentencePiece keeps apart from learned pieces: unknown, "\n", 256 byte pieces
SPM_RESERVED = 258
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
    input_sentence_size=12_500,  # a random sample of at most ~50 MB of text, whatever the corpus size
    shuffle_input_sentence=True,
    max_sentence_length=4192,
    minloglevel=2,
)


def _lines(chunks: Iterable[str], max_chars: int) -> Iterator[str]:
    """Lines ending in "\n" (the last may not); a line over max_chars comes in max_chars slices.

    The cuts depend only on the text, not on how it was chunked.
    """
    carry = ""
    for chunk in chunks:
        parts = chunk.split("\n")
        for part in parts[:-1]:
            line = carry + part + "\n"
            carry = ""
            for start in range(0, len(line), max_chars):
                yield line[start : start + max_chars]
        carry += parts[-1]
        while len(carry) > max_chars:  # an overlong line: flush whole slices early
            yield carry[:max_chars]
            carry = carry[max_chars:]
    if carry:
        yield carry


def spm_sentences(chunks: Iterable[str], max_bytes: int = SPM_CHUNK_BYTES) -> Iterator[str]:
    """Regroup text into training "sentences" under max_bytes, cut after newlines."""
    pending: list[str] = []
    pending_bytes = 0
    for line in _lines(chunks, max_bytes // 4):  # a code point is at most 4 bytes in UTF-8
        size = len(line.encode("utf-8", errors="surrogatepass"))
        if pending and pending_bytes + size > max_bytes:
            yield "".join(pending)
            pending, pending_bytes = [], 0
        pending.append(line)
        pending_bytes += size
    if pending:
        yield "".join(pending)


TextFactory = Callable[[], Iterable[str]]


def _reiterable(text: Union[Iterable[str], TextFactory]) -> TextFactory:
    """A function giving a fresh pass over the text each time it is called."""
    if callable(text):
        return text
    if isinstance(text, Iterator):
        text = list(text)  # a one-shot iterator: keep it for the second pass
    return lambda: text


def _rare_characters(text: TextFactory, keep: int) -> set[int]:
    """Code points outside the `keep` most frequent ones."""
    counts: dict[int, int] = {}
    for chunk in text():
        values, freq = np.unique(_code_points(chunk), return_counts=True)
        for value, n in zip(values.tolist(), freq.tolist()):
            counts[value] = counts.get(value, 0) + n
    if len(counts) <= keep:
        return set()
    ranked = sorted(counts, key=lambda cp: (-counts[cp], cp))
    return set(ranked[keep:])


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
        self._mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in WHITESPACE_MARK.encode("utf-8")]
        self._token_bytes: Optional[list[bytes]] = None

    @classmethod
    def train(
        cls,
        text: Union[Iterable[str], TextFactory],
        vocab_size: int,
        model_type: str = "unigram",
        threads: int = 1,
    ) -> "SentencePieceTokenizer":
        """Train on text (chunks, or a function that gives a fresh pass over them).

        With character_coverage 1.0 every distinct character needs a piece; a corpus with
        more distinct characters than the vocabulary can hold (Chinese, many scripts) would
        fail. So only the most frequent characters, two thirds of the non-byte vocabulary,
        take part in training; rarer ones are cut out of the training text and are encoded
        through byte fallback instead, which still round-trips exactly.
        """
        import sentencepiece as spm

        passes = _reiterable(text)
        keep = max((vocab_size - SPM_RESERVED) * 2 // 3, 1)
        rare = _rare_characters(passes, keep)
        cut = {cp: "\n" for cp in rare}

        def sentences() -> Iterator[str]:
            for sentence in spm_sentences(passes()):
                yield sentence.translate(cut) if cut else sentence

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                num_threads=max(1, threads),
                **SPM_TRAINING_OPTIONS,
            )
        except RuntimeError as exc:
            raise CharlmError(
                f"sentencepiece training failed: {str(exc).strip().splitlines()[-1]}; "
                "try another --vocab-size or a larger corpus"
            ) from None
        return cls(model.getvalue())

    def encode(self, text: str) -> np.ndarray:
        # Line by line ("\n" is a piece of its own, so nothing spans lines): the ids are then
        # the same however a corpus is chunked. A literal U+2581, which SentencePiece reads
        # as its space marker, is written with its three byte-fallback ids instead.
        segments: list[Optional[str]] = []
        for line in _lines([text], max(len(text), 1)):
            if WHITESPACE_MARK in line:
                for index, part in enumerate(line.split(WHITESPACE_MARK)):
                    if index:
                        segments.append(None)
                    if part:
                        segments.append(part)
            else:
                segments.append(line)
        try:
            encoded = iter(self._sp.encode([s for s in segments if s is not None]))
        except TypeError:  # sentencepiece's complaint about a str with no UTF-8 form
            raise _not_unicode(text) from None
        ids: list[int] = []
        for segment in segments:
            ids.extend(self._mark_ids if segment is None else next(encoded))
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: IdsLike) -> str:
        arr = _ids_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise CharlmError(f"token id out of range for a vocabulary of {self.vocab_size}")
        # Through token_bytes rather than SentencePiece's own decode, which writes the unknown
        # id as " \u2047 " and each bad byte of a broken UTF-8 sequence as its own U+FFFD: this
        # way decode gives what StreamDecoder (and so generation) gives, for any ids.
        table = self._bytes_table()
        return b"".join([table[i] for i in arr.tolist()]).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[bytes]:
        return list(self._bytes_table())

    def _bytes_table(self) -> list[bytes]:
        if self._token_bytes is None:
            self._token_bytes = self._piece_bytes()
        return self._token_bytes

    def _piece_bytes(self) -> list[bytes]:
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
        return SentencePieceTokenizer.train(training_text, vocab_size, spm_model_type, threads)
    raise CharlmError(f"--tokenizer must be one of char, byte, sentencepiece (got {kind!r})")


def fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of what every id stands for: equal exactly when two tokenizers read ids alike."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(tokenizer.kind.encode())
    for data in tokenizer.token_bytes():
        digest.update(len(data).to_bytes(4, "little"))
        digest.update(data)
    return digest.hexdigest()


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
