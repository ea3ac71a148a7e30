"""Find a corpus, read it as a stream of text, split it, and encode it to cached token files.

A corpus is a file, a folder (every text file below it, sorted by path), or a named corpus
(see corpora.py). Text is read in chunks with an incremental UTF-8 decoder, so memory stays
bounded whatever the corpus size, and a bad byte is reported with its file, offset and line.

Splits are cut in characters, not tokens, so every tokenizer sees the same validation text:

    |<------------- train ------------->|<-- val -->|<- test ->|
    0                          n*(1-v-t)       n*(1-t)         n     (n = characters)

unless --val-data / --test-data name their own sources. The tokenizer is fitted on the
training split only. Each split is encoded chunk by chunk into <split>.npy (the smallest
unsigned dtype that holds the vocabulary) in a cache folder keyed by the sources (path,
size, mtime) and the tokenizer options, then memory-mapped; a second run with the same
corpus and tokenizer reuses it without reading the text again. A cache folder appears
whole (built under a hidden name, then renamed) or not at all, a full disk included, and
one that no longer matches its meta.json is rebuilt rather than trusted.

Only regular files are read: devices, pipes and sockets are refused (reading /dev/zero
never ends, a FIFO waits forever), and so is a file named directly that looks binary.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from charlm.errors import CharlmError, write_error
from charlm.files import atomic_write_bytes, fsync_dir, temporary_folder
from charlm.text.corpora import NAMED_CORPORA, resolve_named_corpus
from charlm.text.tokenizer import Tokenizer, build_tokenizer, load_tokenizer, token_dtype

READ_CHUNK_BYTES = 4 << 20
CACHE_FORMAT = 2
SPLITS = ("train", "val", "test")
# A file is taken for binary (and skipped inside a folder) when its first block has a NUL byte.
BINARY_SNIFF_BYTES = 8192


_WORD = re.compile(r"\S+")


class TextCounter:
    """Characters, UTF-8 bytes and whitespace-separated words of a text fed in chunks."""

    def __init__(self) -> None:
        self.chars = self.bytes = self.words = 0
        self._in_word = False

    def add(self, chunk: str) -> None:
        if not chunk:
            return
        self.chars += len(chunk)
        self.bytes += len(chunk.encode("utf-8", errors="surrogatepass"))
        self.words += len(_WORD.findall(chunk))
        if self._in_word and not chunk[0].isspace():
            self.words -= 1  # one word cut in two by the chunk boundary
        self._in_word = not chunk[-1].isspace()


@dataclass
class TextSource:
    """One or more files read as a single text, in order."""

    label: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> list:
        out = []
        for path in self.files:
            st = path.stat()
            out.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
        return out

    def iter_text(self, errors: str = "strict") -> Iterator[str]:
        """Yield the text in chunks; a file that lacks a final newline is followed by one."""
        for index, path in enumerate(self.files):
            last = ""
            for chunk in _iter_file_text(path, errors):
                if chunk:
                    last = chunk
                    yield chunk
            if index < len(self.files) - 1 and last and not last.endswith("\n"):
                yield "\n"


def _iter_file_text(path: Path, errors: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = 0  # bytes of the file handed to the decoder so far
    newlines = 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise CharlmError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        while True:
            try:
                block = f.read(READ_CHUNK_BYTES)
            except OSError as exc:  # e.g. EIO from a failing disk or a /proc file like /proc/self/mem
                raise CharlmError(f"cannot read {path} at byte {offset:,} ({exc.strerror or exc}); check the file") from None
            final = not block
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                position = offset - pending + exc.start
                line = newlines + _count_newlines_before(path, offset - pending, position)
                raise CharlmError(
                    f"{path}: byte {position} (line {line + 1}) is not valid UTF-8; "
                    "convert the file to UTF-8 or pass --encoding-errors replace"
                ) from None
            offset += len(block)
            newlines += block.count(b"\n")
            if text:
                yield text
            if final:
                return


def _count_newlines_before(path: Path, start: int, end: int) -> int:
    with open(path, "rb") as f:
        f.seek(max(start, 0))
        return f.read(max(end - max(start, 0), 0)).count(b"\n")


def _is_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(BINARY_SNIFF_BYTES)
    except OSError:
        return True


def _refuse_binary(path: Path, option: str) -> None:
    """A corpus named directly must be text: a NUL byte early on means an image, archive,
    executable or UTF-16 file, which would only train the model on noise."""
    try:
        with open(path, "rb") as f:
            head = f.read(BINARY_SNIFF_BYTES)
    except OSError as exc:
        raise CharlmError(f"{option}: cannot read {path} ({exc.strerror or exc}); check the file") from None
    nul = head.find(b"\0")
    if nul >= 0:
        raise CharlmError(
            f"{option}: {path} looks like a binary file, not text (a NUL byte at offset {nul}); "
            "give a UTF-8 text file (convert UTF-16 text to UTF-8 first)"
        )


def _folder_files(folder: Path) -> tuple[list[Path], int]:
    files, skipped = [], 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            path = Path(root) / name
            if not path.is_file():
                continue
            if _is_binary(path):
                skipped += 1
                continue
            files.append(path)
    files.sort(key=lambda p: p.relative_to(folder).as_posix())
    return files, skipped


def resolve_source(spec: str, option: str = "--data", data_dir: Optional[Path] = None) -> TextSource:
    """Turn a --data value into files: an existing path first, then a named corpus."""
    path = Path(spec).expanduser()
    if path.is_file():
        _refuse_binary(path, option)
        return TextSource(label=path.stem, files=[path])
    if path.is_dir():
        files, skipped = _folder_files(path)
        if not files:
            also = f" ({skipped} binary or unreadable file(s) skipped)" if skipped else ""
            raise CharlmError(
                f"{option}: folder {path} has no text files{also}; point it at a folder of .txt or source files"
            )
        notes = [f"skipped {skipped} binary or unreadable file(s) in {path}"] if skipped else []
        return TextSource(label=path.resolve().name, files=files, notes=notes)
    if spec in NAMED_CORPORA:
        label, files, notes = resolve_named_corpus(spec, data_dir)
        return TextSource(label=label, files=files, notes=notes)
    if path.is_symlink() and not path.exists():
        raise CharlmError(f"{option}: {path} is a broken or looping symbolic link; give a text file or folder")
    if path.exists():
        # a device (/dev/zero never ends), a FIFO (reading it would wait forever) or a socket
        raise CharlmError(
            f"{option}: {path} is neither a regular file nor a folder (a device, pipe or socket); "
            "give a text file or a folder of them"
        )
    raise CharlmError(
        f"{option}: no such file or folder: {spec!r} (named corpora: {', '.join(sorted(NAMED_CORPORA))})"
    )


# ---------------------------------------------------------------------------------------
# Encoding into token files


class _TokenFileWriter:
    """Streams id chunks into a .npy file whose header gets the final length at close.

    Plain writes, no memory map: on a full disk a memory-mapped write dies of SIGBUS, a
    plain one raises OSError(ENOSPC) that can be reported. A 1-D .npy header is 128 bytes
    whatever the length, so the one written first is overwritten in place.
    """

    def __init__(self, folder: Path, name: str, dtype: np.dtype):
        self.path = folder / f"{name}.npy"
        self.dtype = dtype
        self.count = 0
        self._file = open(self.path, "wb")
        self._header_size = self._file.write(self._header())

    def _header(self) -> bytes:
        buffer = io.BytesIO()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.count,)}
        np.lib.format.write_array_header_1_0(buffer, header)
        return buffer.getvalue()

    def append(self, ids: np.ndarray) -> None:
        if ids.size:
            self._file.write(np.ascontiguousarray(ids, dtype=self.dtype).data)
            self.count += int(ids.size)

    def close(self) -> None:
        try:
            header = self._header()
            if len(header) != self._header_size:
                raise RuntimeError(f".npy header grew from {self._header_size} to {len(header)} bytes")
            self._file.seek(0)
            self._file.write(header)
            self._file.flush()
        finally:
            self._file.close()


def _slice_stream(chunks: Iterator[str], start: int, end: int) -> Iterator[str]:
    """Characters [start, end) of a chunk stream."""
    position = 0
    for chunk in chunks:
        chunk_end = position + len(chunk)
        if chunk_end > start and position < end:
            yield chunk[max(start - position, 0) : min(end - position, len(chunk))]
        position = chunk_end
        if position >= end:
            return


def newline_chunks(chunks: Iterator[str], limit: int = 1 << 22) -> Iterator[str]:
    """Regroup chunks so each ends after a newline where one is near: SentencePiece encodes
    line by line, so a line must not be cut between two chunks."""
    carry = ""
    for chunk in chunks:
        text = carry + chunk
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) < limit:
            carry = text
            continue
        if cut == 0:
            cut = len(text)
        yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry


@dataclass
class SplitPlan:
    """Where each split's text comes from: a source and a character range in it."""

    source: TextSource
    start: int
    end: Optional[int]  # None: to the end

    def iter_text(self, errors: str) -> Iterator[str]:
        chunks = self.source.iter_text(errors)
        if self.start == 0 and self.end is None:
            return chunks
        return _slice_stream(chunks, self.start, self.end if self.end is not None else 1 << 62)


@dataclass
class PreparedCorpus:
    """Tokenizer plus memory-mapped token arrays for each split (empty array when absent)."""

    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    chars: dict[str, int]
    bytes: dict[str, int]
    words: dict[str, int]
    unknown: dict[str, int]
    label: str
    cache_dir: Path
    from_cache: bool
    notes: list[str]


def _count_text(source: TextSource, errors: str) -> tuple[int, int, bool]:
    """(characters, UTF-8 bytes, has non-whitespace) of a source, streaming."""
    chars = nbytes = 0
    has_text = False
    for chunk in source.iter_text(errors):
        chars += len(chunk)
        nbytes += len(chunk.encode("utf-8", errors="surrogatepass"))
        if not has_text and not chunk.isspace():
            has_text = True
    return chars, nbytes, has_text


def _check_not_empty(source: TextSource, option: str, chars: int, has_text: bool) -> None:
    where = source.files[0] if len(source.files) == 1 else source.label
    if chars == 0:
        raise CharlmError(f"{option}: {where} is empty; give a file with some text in it")
    if not has_text:
        raise CharlmError(f"{option}: {where} contains only whitespace; give a file with some text in it")


def default_cache_root(data_dir: Optional[Path] = None) -> Path:
    env = os.environ.get("CHARLM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from charlm.text.corpora import default_data_dir

    return (data_dir or default_data_dir()) / "cache"


def prepare_corpus(
    data: str,
    val_data: Optional[str] = None,
    test_data: Optional[str] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    tokenizer: str = "char",
    vocab_size: int = 2000,
    spm_model_type: str = "unigram",
    encoding_errors: str = "strict",
    threads: int = 1,
    cache_root: Optional[Path] = None,
    data_dir: Optional[Path] = None,
    main_source: Optional[TextSource] = None,
    on_stage: Optional[Callable[[str], None]] = None,
) -> PreparedCorpus:
    """Resolve, split, fit the tokenizer and encode; reuse the cache when nothing changed."""
    stage = on_stage or (lambda message: None)
    main = main_source or resolve_source(data, "--data", data_dir)
    val_source = resolve_source(val_data, "--val-data", data_dir) if val_data else None
    test_source = resolve_source(test_data, "--test-data", data_dir) if test_data else None
    notes = list(main.notes)

    key_fields = {
        "format": CACHE_FORMAT,
        "main": main.fingerprint(),
        "val": val_source.fingerprint() if val_source else None,
        "test": test_source.fingerprint() if test_source else None,
        "val_fraction": None if val_source else val_fraction,
        "test_fraction": None if test_source else test_fraction,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size if tokenizer == "sentencepiece" else None,
        "spm_model_type": spm_model_type if tokenizer == "sentencepiece" else None,
        "encoding_errors": encoding_errors,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_root) if cache_root else default_cache_root(data_dir)
    folder = root / f"{main.label[:40]}-{tokenizer}-{key}"

    from_cache = (folder / "meta.json").is_file()
    if from_cache:
        try:
            meta, tok, splits = _load_cache(folder)
        except CharlmError:
            # a cache folder damaged since it was written (by hand, a disk fault): never
            # trust it, rebuild it from the text
            _discard_cache(folder)
            from_cache = False
    if not from_cache:
        stage(f"reading corpus {main.label}")
        _build_cache(folder, main, val_source, test_source, key_fields, threads, stage)
        meta, tok, splits = _load_cache(folder)
    if tokenizer == "sentencepiece" and tok.vocab_size < vocab_size:
        notes.append(
            f"--vocab-size {vocab_size:,}: sentencepiece found only {tok.vocab_size:,} pieces in this corpus, "
            f"so the vocabulary has {tok.vocab_size:,}; more varied text gives a larger one"
        )
    unknown = meta.get("unknown", {})
    for name in ("val", "test"):
        if unknown.get(name):
            notes.append(
                f"{unknown[name]:,} character(s) of the {name} split never occur in the training split; "
                "they are scored as the unknown symbol"
            )
    return PreparedCorpus(
        tokenizer=tok,
        splits=splits,
        chars=meta["chars"],
        bytes=meta["bytes"],
        words=meta["words"],
        unknown=meta["unknown"],
        label=main.label,
        cache_dir=folder,
        from_cache=from_cache,
        notes=notes,
    )


def _load_cache(folder: Path) -> tuple[dict, Tokenizer, dict[str, np.ndarray]]:
    """meta.json, the tokenizer and the memory-mapped splits of a cache folder, each
    checked against meta.json; CharlmError when anything is missing or does not match."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        tok = load_tokenizer(folder)
        splits = {}
        for name in SPLITS:
            count = int(meta["tokens"][name])
            if not count:
                splits[name] = np.zeros(0, np.uint8)
                continue
            array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if array.ndim != 1 or len(array) != count or array.dtype != token_dtype(tok.vocab_size):
                raise ValueError(f"{name}.npy holds {array.shape} {array.dtype}, meta.json says {count}")
            splits[name] = array
        for key in ("chars", "bytes", "words", "unknown"):
            if not isinstance(meta[key], dict):
                raise ValueError(f"meta.json {key} is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CharlmError(f"token cache {folder} is damaged ({exc}); delete it and run again") from None
    return meta, tok, splits


def _discard_cache(folder: Path) -> None:
    """Move a cache folder out of the way (atomically, so no reader sees half of it) and delete it."""
    doomed = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        os.rename(folder, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _build_cache(folder, main, val_source, test_source, key_fields, threads, stage) -> None:
    errors = key_fields["encoding_errors"]
    main_chars, main_bytes, has_text = _count_text(main, errors)
    _check_not_empty(main, "--data", main_chars, has_text)

    plans: dict[str, Optional[SplitPlan]] = {}
    cut_test = 0 if test_source else int(main_chars * key_fields["test_fraction"])
    cut_val = 0 if val_source else int(main_chars * key_fields["val_fraction"])
    train_end = main_chars - cut_val - cut_test
    if train_end <= 0:
        raise CharlmError("--val-fraction and --test-fraction leave no training text; lower them")
    plans["train"] = SplitPlan(main, 0, train_end if (cut_val or cut_test) else None)
    plans["val"] = SplitPlan(val_source, 0, None) if val_source else (
        SplitPlan(main, train_end, train_end + cut_val) if cut_val else None
    )
    plans["test"] = SplitPlan(test_source, 0, None) if test_source else (
        SplitPlan(main, train_end + cut_val, main_chars) if cut_test else None
    )
    for name, option, source in (("val", "--val-data", val_source), ("test", "--test-data", test_source)):
        if source is not None:
            chars, _, has_text = _count_text(source, errors)
            _check_not_empty(source, option, chars, has_text)

    stage(f"fitting the {key_fields['tokenizer']} tokenizer on the training split")
    tok = build_tokenizer(
        key_fields["tokenizer"],
        lambda: plans["train"].iter_text(errors),
        vocab_size=key_fields["vocab_size"] or 0,
        spm_model_type=key_fields["spm_model_type"] or "unigram",
        threads=threads,
    )

    try:
        _write_cache(folder, main, plans, tok, key_fields, stage)
    except OSError as exc:  # reading the text raises CharlmError, so this is a write that failed
        fix = "set CHARLM_CACHE_DIR to a writable folder with room"
        raise write_error(exc, "the token cache", folder.parent, fix) from None


def _write_cache(folder, main, plans, tok, key_fields, stage) -> None:
    """Encode every split into a hidden work folder, then rename it into place: a cache folder
    with a meta.json is complete, and a failure at any point leaves none."""
    errors = key_fields["encoding_errors"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = temporary_folder(folder.parent, f".{folder.name}.")
    try:
        tok.save(work)
        dtype = token_dtype(tok.vocab_size)
        tokens, chars, nbytes, unknown, words = {}, {}, {}, {}, {}
        for name in SPLITS:
            plan = plans[name]
            writer = _TokenFileWriter(work, name, dtype)
            counter = TextCounter()
            n_unknown = 0
            if plan is not None:
                stage(f"encoding the {name} split")
                for chunk in newline_chunks(plan.iter_text(errors)):
                    ids = tok.encode(chunk)
                    writer.append(ids)
                    counter.add(chunk)
                    if tok.unk_id is not None:
                        n_unknown += int(np.count_nonzero(ids == tok.unk_id))
            writer.close()
            tokens[name], chars[name], nbytes[name], unknown[name] = writer.count, counter.chars, counter.bytes, n_unknown
            words[name] = counter.words
        meta = {
            "key": key_fields,
            "label": main.label,
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "tokens": tokens,
            "chars": chars,
            "bytes": nbytes,
            "words": words,
            "unknown": unknown,
        }
        atomic_write_bytes(work / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
        for path in work.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.rename(work, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not just a concurrent run that won the race
                raise
        fsync_dir(folder.parent)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
