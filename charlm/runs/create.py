"""Making a new run folder: may --out be used, and the run's first files written into it.

  check_out_writable    --out can be created and written (probed with a real folder), checked
                        before a long corpus preparation rather than after it
  create_run_directory  the run's first files (tokenizer, config); a failure, such as a full
                        disk, removes what it created and leaves an existing run alone

Whether the folder holds a run that may be resumed or replaced is RunDirectory.check's call.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from charlm.config import RunConfig
from charlm.errors import OptionError, write_error
from charlm.files import fsync_dir, temporary_folder
from charlm.runs.directory import RunDirectory
from charlm.text.tokenizer import Tokenizer


def check_out_writable(out: Path) -> None:
    """Raise CharlmError unless a run folder can be made at out (or out is a writable folder).

    Walks up to the nearest part of the path that exists; a regular file there means no
    folder can be made below it. A real folder is made and removed there, since as root
    permission bits say nothing (read-only mounts, /proc and /sys refuse all the same).
    """
    existing = out
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise OptionError("out", f"{out}: {existing} is a broken or looping symbolic link; choose another --out")
    if not existing.is_dir():
        if existing == out:
            raise OptionError("out", f"{out} is a file; choose a folder for the run")
        raise OptionError(
            "out", f"{out}: {existing} is a file, so no folder can be made below it; choose another --out"
        )
    try:
        probe = tempfile.mkdtemp(prefix=".charlm-write-test-", dir=existing)
    except OSError as exc:
        raise OptionError(
            "out", f"{out}: cannot create a folder in {existing} ({exc.strerror or exc}); choose a writable --out"
        ) from None
    os.rmdir(probe)


def create_run_directory(run_dir: RunDirectory, overwrite: bool, tokenizer: Tokenizer, config: RunConfig) -> None:
    """Create the run folder with its tokenizer and config; a failure leaves no trace.

    The files are written first into a hidden folder beside the run and moved in once all
    are complete, so a full disk stops the run before an existing run is cleared for
    --overwrite, and a folder that did not exist (with any parents made for it) is gone again.
    """
    path = run_dir.path
    doomed = path  # what to remove on failure: the topmost folder this makes, if any
    while not doomed.parent.exists() and doomed.parent != doomed:
        doomed = doomed.parent
    remove_on_failure = None if path.exists() else doomed
    staging = None
    try:
        real = path.resolve()  # beside the real folder (--out . or a link): same disk, so renames work
        real.parent.mkdir(parents=True, exist_ok=True)
        staging = temporary_folder(real.parent, f".{real.name}.new.")
        RunDirectory(staging).save_tokenizer(tokenizer)
        RunDirectory(staging).write_config(config)
        run_dir.prepare(overwrite=overwrite)
        for item in sorted(staging.iterdir()):
            os.replace(item, real / item.name)  # a rename on the same disk: needs no space
        fsync_dir(real)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if remove_on_failure is not None:
            shutil.rmtree(remove_on_failure, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(exc, "the run's tokenizer and config", path, "choose another --out") from None
        raise
    staging.rmdir()
