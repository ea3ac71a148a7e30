"""Files on disk, safely: atomic writes, and bounded reads of files that may come from a stranger.

Writing: each write goes to a temporary name in the same folder, is flushed and fsynced,
then renamed over the target; the folder is fsynced so the rename itself survives a crash.
A reader sees the old file or the whole new one, never a torn one.

Reading: a run directory or a token cache is data, never code, and reading it must not
hang, exhaust memory or wander outside the folder. Every file read here must be a regular
file (a FIFO named config.json would block forever, a link to /dev/zero would never end) no
larger than a cap chosen per file; JSON nested too deeply to parse is an error, not a
RecursionError; and a file name taken from inside a file must be a plain name in the same
folder (no "..", no absolute path, no separators). Each failure is a CharlmError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from charlm.errors import CharlmError

PathLike = Union[str, Path]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _current_umask()


def fsync_dir(directory: PathLike) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside target; on success it replaces target atomically.

    The caller writes the file at the yielded path by any means (numpy, safetensors,
    torch). On an exception the temporary file is removed and target is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual permissions
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def temporary_folder(parent: PathLike, prefix: str) -> Path:
    """A new hidden folder in parent (for building something to rename into place)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, 0o777 & ~UMASK)  # mkdtemp makes 0700
    return folder


def atomic_write_bytes(target: PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


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
