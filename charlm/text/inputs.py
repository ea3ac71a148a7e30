"""Text a user hands a command: prompts, the text to score, JSON lines.

  read_prompt_file   generate --prompt-file: UTF-8, at most MAX_PROMPT_BYTES, a file not a folder
  require_utf8       a command-line string (--prompt, --stop) must be Unicode text
  read_data          perplexity --data: a file, a folder, or - for stdin (at most MAX_STDIN_BYTES),
                     as chunks cut at newlines
  read_data_lines    perplexity --per-line: (line number, text) per line, or one field of each
                     JSON line with --field

Each refuses what it cannot read with one CharlmError that names the option and the fix.
Every read is bounded, so /dev/zero or an endless pipe ends with an error, not an exhausted
machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO, Optional

from charlm.errors import CharlmError
from charlm.text.sources import newline_chunks, resolve_source

MAX_PROMPT_BYTES = 16 << 20  # --prompt-file; the prompt is primed in windows, but held whole
MAX_STDIN_BYTES = 1 << 30  # perplexity --data -: so an endless pipe (< /dev/zero) ends with an error


def read_prompt_file(path: Path) -> str:
    """The text of --prompt-file: UTF-8, at most MAX_PROMPT_BYTES (so /dev/zero cannot run
    the machine out of memory; a pipe such as <(command) is fine)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPT_BYTES + 1)
    except FileNotFoundError:
        raise CharlmError(f"--prompt-file: no such file: {path}") from None
    except IsADirectoryError:
        raise CharlmError(f"--prompt-file: {path} is a folder; give a text file") from None
    except OSError as exc:
        raise CharlmError(f"--prompt-file: {path} cannot be read ({exc.strerror})") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise CharlmError(
            f"--prompt-file: {path} is larger than {MAX_PROMPT_BYTES >> 20} MiB, the most a prompt may be; "
            "give the end of it"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CharlmError(f"--prompt-file: {path} is not UTF-8 (byte {exc.start}); convert it") from None


def require_utf8(text: str, option: str, what: str) -> None:
    """Refuse an argument that is not Unicode text: bytes that are not UTF-8 in the command
    line arrive as lone surrogates, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CharlmError(f"{option}: character {exc.start} is not valid UTF-8; give {what} as UTF-8 text") from None


def read_stdin(errors: str, stream: Optional[BinaryIO] = None) -> str:
    """All of stream (standard input unless given), at most MAX_STDIN_BYTES, decoded as UTF-8."""
    stream = stream if stream is not None else sys.stdin.buffer
    raw = stream.read(MAX_STDIN_BYTES + 1)
    if len(raw) > MAX_STDIN_BYTES:
        raise CharlmError(
            f"stdin gave more than {MAX_STDIN_BYTES >> 30} GiB, the most --data - reads; "
            "save the text to a file and pass --data FILE"
        )
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise CharlmError(f"stdin: byte {exc.start} is not valid UTF-8; pass --encoding-errors replace") from None


def read_data(data: str, errors: str, stdin: Optional[BinaryIO] = None) -> list[str]:
    """The text of --data as chunks cut at newlines (a file, a folder, or - for stdin)."""
    if data == "-":
        return [read_stdin(errors, stdin)]
    source = resolve_source(data, "--data")
    return list(newline_chunks(source.iter_text(errors)))


def _field_of(line: str, field: str, number: int, where: str) -> str:
    """The text in field of the JSON object on line `number`."""
    try:
        record = json.loads(line)
        value = record[field]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        raise CharlmError(
            f"{where} line {number} is not a JSON object with a {field!r} field; "
            "give one JSON object per line, or leave out --field"
        ) from None
    if not isinstance(value, str):
        raise CharlmError(f"{where} line {number}: field {field!r} is not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a "\ud800" escape in the JSON
        raise CharlmError(
            f"{where} line {number}: field {field!r} is not valid Unicode: character {exc.start} is "
            f"U+{ord(value[exc.start]):04X}, a lone surrogate (a \\u escape in the JSON); give UTF-8 text"
        ) from None
    return value


def read_data_lines(
    data: str, field: Optional[str], errors: str, stdin: Optional[BinaryIO] = None
) -> list[tuple[int, str]]:
    """(line number, text) for each line of --data; with --field, that field of each JSON
    line (blank lines skipped). A final newline ends the last line rather than starting one."""
    text = "".join(read_data(data, errors, stdin))
    where = "--data -" if data == "-" else f"--data {data}"
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if field:
            if not line.strip():
                continue
            line = _field_of(line, field, number, where)
        lines.append((number, line))
    if lines and lines[-1][1] == "" and text.endswith("\n") and not field:
        lines.pop()
    if not any(line for _, line in lines):
        raise CharlmError("nothing to score: --data has no text")
    return lines
