"""The SentencePiece tokenizer: a unigram or BPE model trained on the training split.

It is trained with options that round-trip text exactly (identity normalisation, no extra
whitespace handling, byte fallback, "\\n" kept as a piece of its own), on "sentences" cut
after newlines and kept under SentencePiece's length limit, and sampled to a bounded size
whatever the corpus. Rare characters outside the vocabulary's reach fall back to byte
pieces, so nothing is unknown. Its model file is read back from bytes only (see
tokenizer.load_tokenizer, which checks the file first).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np

from charlm.errors import CharlmError
from charlm.text.tokenizer import (
    FORMAT_VERSION,
    SPM_MODEL_FILE,
    TOKENIZER_FILE,
    UNKNOWN_CHAR,
    IdsLike,
    TextFactory,
    _code_points,
    _ids_array,
    _not_unicode,
    _write_bytes,
    _write_json,
)

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
