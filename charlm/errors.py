"""The one exception family charlm raises for problems a user can fix.

Every message names the problem and, where there is one, the fix. The CLI turns a
CharlmError into a single line on stderr and a non-zero exit; library callers can
catch it like any other exception. An OptionError is about the value of one option or
config field: its message names the field as a library caller writes it ("lr"), and the
CLI names the flag instead ("--lr"). write_error words every failed write alike.
"""

from __future__ import annotations

import errno

# errno values that mean the disk, a quota or a file size limit is full
NO_SPACE = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))
# errno values that mean this process may not write there
NO_PERMISSION = (errno.EACCES, errno.EPERM)


class CharlmError(Exception):
    """A user-facing error: bad input, bad option, missing or damaged file."""


class OptionError(CharlmError):
    """A bad value of one option or config field.

    `option` is the field's name as a library caller writes it ("lr", "num_samples");
    `problem` says what is wrong with its value ("must be positive (got -1)"). str() reads
    "lr must be positive (got -1)"; `spelled(name)` gives the same message with the option
    written another way (the CLI passes "--lr"). `before`/`after` hold text a caller that
    quotes the error put around it (a damaged config file's path and fix)."""

    def __init__(self, option: str, problem: str, before: str = "", after: str = ""):
        self.option, self.problem, self.before, self.after = option, problem, before, after
        super().__init__(self.spelled(option))

    def spelled(self, name: str) -> str:
        return f"{self.before}{name} {self.problem}{self.after}"

    def within(self, before: str = "", after: str = "") -> "OptionError":
        """The same error quoted inside a longer message: `before` + this one + `after`."""
        return OptionError(self.option, self.problem, before + self.before, self.after + after)


def check(condition: bool, option: str, problem: str) -> None:
    """Raise OptionError(option, problem) unless condition holds."""
    if not condition:
        raise OptionError(option, problem)


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (or its type's name), to quote in one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_write_failure(exc: BaseException) -> bool:
    """True for an OSError that only a write raises: a full disk, no permission, read-only."""
    return isinstance(exc, OSError) and exc.errno in (*NO_SPACE, *NO_PERMISSION, errno.EROFS)


def write_error(exc: OSError, what: str, where, fix: str) -> CharlmError:
    """The CharlmError for an OSError raised while writing `what` in `where`.

    `fix` is the way to write somewhere else (e.g. "choose another --out"); the message
    tells apart a full disk (or quota, or file size limit: free space), a folder this
    process may not write to (permissions), a read-only file system, and anything else."""
    reason = exc.strerror or str(exc)
    if exc.errno in NO_SPACE:
        return CharlmError(
            f"no space left to write {what} in {where} ({reason}); free some disk space or {fix}, then run again"
        )
    if exc.errno in NO_PERMISSION:
        return CharlmError(
            f"permission denied writing {what} in {where} ({reason}); choose a folder you may write to or {fix}"
        )
    if exc.errno == errno.EROFS:
        return CharlmError(f"cannot write {what} in {where}: the file system there is read-only; {fix}")
    return CharlmError(f"cannot write {what} in {where} ({reason}); {fix}")
