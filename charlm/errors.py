"""The one exception family charlm raises for problems a user can fix.

Every message names the problem and, where there is one, the fix. The CLI turns a
CharlmError into a single line on stderr and a non-zero exit; library callers can
catch it like any other exception.
"""

import errno

# errno values that mean the disk, a quota or a file size limit is full
NO_SPACE = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))


class CharlmError(Exception):
    """A user-facing error: bad input, bad option, missing or damaged file."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (or its type's name), to quote in one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_error(exc: OSError, what: str, where, fix: str) -> CharlmError:
    """The CharlmError for an OSError raised while writing `what` in `where`; a full disk
    (or quota, or file size limit) says so, since the fix is then to free space."""
    reason = exc.strerror or str(exc)
    if exc.errno in NO_SPACE:
        return CharlmError(
            f"no space left to write {what} in {where} ({reason}); free some disk space or {fix}, then run again"
        )
    return CharlmError(f"cannot write {what} in {where} ({reason}); {fix}")
