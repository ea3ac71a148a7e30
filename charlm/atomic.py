"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Each write goes to a temporary name in the same folder, is flushed and fsynced, then
renamed over the target; the folder is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union

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


def atomic_write_with(target: PathLike, writer: Callable[[Path], None]) -> None:
    """Run writer(tmp_path) and move the result onto target atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
