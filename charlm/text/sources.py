"""Text sources: find the text of a --data value and read it as a stream of chunks.

A source is a file, a folder (every text file below it, sorted by path), or a named corpus
(see corpora.py). Text is read in chunks with an incremental UTF-8 decoder, so memory stays
bounded whatever the corpus size, and a bad byte is reported with its file, offset and line.
TextCounter counts characters, UTF-8 bytes and words of a text fed in chunks.

Only regular files are read: devices, pipes and sockets are refused (reading /dev/zero
never ends, a FIFO waits forever), and so is a file named directly that looks binary.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from charlm.errors import CharlmError
from charlm.text.corpora import NAMED_CORPORA, resolve_named_corpus

READ_CHUNK_BYTES = 4 << 20
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
                raise CharlmError(
                    f"cannot read {path} at byte {offset:,} ({exc.strerror or exc}); check the file"
                ) from None
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
    raise CharlmError(f"{option}: no such file or folder: {spec!r} (named corpora: {', '.join(sorted(NAMED_CORPORA))})")


# ---------------------------------------------------------------------------------------
# Regrouping a chunk stream


def slice_stream(chunks: Iterator[str], start: int, end: int) -> Iterator[str]:
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


def count_text(source: TextSource, errors: str) -> tuple[int, int, bool]:
    """(characters, UTF-8 bytes, has non-whitespace) of a source, streaming."""
    chars = nbytes = 0
    has_text = False
    for chunk in source.iter_text(errors):
        chars += len(chunk)
        nbytes += len(chunk.encode("utf-8", errors="surrogatepass"))
        if not has_text and not chunk.isspace():
            has_text = True
    return chars, nbytes, has_text


def check_not_empty(source: TextSource, option: str, chars: int, has_text: bool) -> None:
    where = source.files[0] if len(source.files) == 1 else source.label
    if chars == 0:
        raise CharlmError(f"{option}: {where} is empty; give a file with some text in it")
    if not has_text:
        raise CharlmError(f"{option}: {where} contains only whitespace; give a file with some text in it")
