"""Reading the files of a run directory, which may have come from a stranger.

A run directory is data, never code, and reading it must not hang, exhaust memory or wander
outside the folder. Every file read here must be a regular file (a FIFO named config.json
would block forever, a link to /dev/zero would never end) no larger than a cap chosen per
file; JSON nested too deeply to parse is an error, not a RecursionError; and a file name
taken from inside a run file must be a plain name in the run folder itself (no "..", no
absolute path, no separators). Each failure is a CharlmError naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import CharlmError

KIB, MIB = 1 << 10, 1 << 20
# config.json is a few KB; tokenizer.json for a char vocabulary of every Unicode code point is
# about 9 MB; a SentencePiece model of a million pieces is about 20 MB.
CONFIG_LIMIT = 1 * MIB
TOKENIZER_JSON_LIMIT = 32 * MIB
SPM_MODEL_LIMIT = 256 * MIB


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB else f"{n / KIB:g} KiB"


def require_regular_file(path: Path, missing: str, fix: str = "restore the file or retrain") -> int:
    """The size of path, which must be a regular file (links to one are fine).

    missing: the end of the message when there is no such file; fix: what to do when it is
    something else."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CharlmError(f"{path} is missing; {missing}") from None
    except OSError as exc:
        raise CharlmError(f"{path} cannot be read ({exc.strerror}); check the run directory") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise CharlmError(f"{path} is {kind}; the run directory is damaged: {fix}")
    return info.st_size


def read_bytes(path: Path, limit: int, missing: str) -> bytes:
    """The whole of a regular file of at most `limit` bytes."""
    size = require_regular_file(path, missing)
    if size > limit:
        raise CharlmError(
            f"{path} is {_size(size)}, more than the {_size(limit)} such a file can be; "
            "it is not a charlm file: restore the run's own file or retrain"
        )
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise CharlmError(f"{path} cannot be read ({exc.strerror}); check the run directory") from None
    if len(data) > limit:  # it grew since the stat
        raise CharlmError(f"{path} is larger than {_size(limit)}; it is not a charlm file")
    return data


def read_json(path: Path, limit: int, missing: str) -> Any:
    """A JSON file of the run directory, parsed (any value; callers check its shape)."""
    data = read_bytes(path, limit, missing)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"byte {exc.start} is not UTF-8"
    except RecursionError:
        problem = "it is nested too deeply"
    except ValueError as exc:  # json.JSONDecodeError
        problem = f"not valid JSON: {exc}" if data.strip() else "it is empty"
    raise CharlmError(f"{path} cannot be read ({problem}); the file is damaged: restore it or retrain the run")


def plain_file_name(name: Any, source: Path, field: str) -> str:
    """A file name given in field of the file source: a bare name inside the same folder."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "\x00" in name
        or "/" in name
        or "\\" in name
        or (os.altsep is not None and os.altsep in name)
        or os.path.isabs(name)
    ):
        raise CharlmError(
            f"{source}: {field} must be a plain file name inside the run folder (got {name!r}); "
            "the file is damaged or crafted: restore it or retrain"
        )
    return name
