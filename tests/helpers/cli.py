"""Driving the charlm command line from tests, in this process or as a real child process.

invoke() runs the click CLI in this process (fast; stdout and stderr kept apart); run_cli()
runs `python -m charlm`, a shim at the repository root or the console script in a child with
child_env(). assert_user_error() is the one check of what every user error must look like,
for either kind of result. snapshot() and entries() record a folder, to show it is untouched.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import pytest
from click.testing import CliRunner, Result

from .texts import REPO

ERROR_PREFIX = "charlm: error:"
# Environment variables that would make rich draw colours or a live display on a pipe.
FORCE_TERMINAL_VARS = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE")
# The variables conftest sets for every test (an isolated data folder, a mirror that fails).
KEPT_CHARLM_VARS = ("CHARLM_DATA_DIR", "CHARLM_SHAKESPEARE_URL")

# A small model and small batches: every training run with these takes a second or two.
TINY_MODEL = ["--hidden", "32", "--layers", "1", "--embed", "16", "--threads", "1",
              "--sample-length", "50", "--eval-every", "10", "--log-every", "10"]  # fmt: skip
TINY_BATCH = ["--batch-size", "4", "--seq-len", "16"]
TINY = TINY_MODEL + TINY_BATCH
# For runs that should fail before training: should one train after all, it stops at once.
SAFE = TINY + ["--max-steps", "5"]


@dataclass
class Finished:
    """A finished child process, its output decoded strictly as UTF-8."""

    returncode: int
    stdout: str
    stderr: str


def child_env(data_dir: Optional[Path] = None, **overrides: str) -> dict[str, str]:
    """os.environ for a child charlm, minus anything that would force terminal output or set
    options behind the test's back (every CHARLM_* variable but the data folder and mirror
    conftest sets). data_dir: its own data folder, and a mirror address that fails at once
    (for module-scoped fixtures, which run outside the per-test folder)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in FORCE_TERMINAL_VARS and (not name.startswith("CHARLM_") or name in KEPT_CHARLM_VARS)
    }
    if data_dir is not None:
        env["CHARLM_DATA_DIR"] = str(data_dir)
        env["CHARLM_SHAKESPEARE_URL"] = (data_dir / "no-such-mirror" / "input.txt").as_uri()
    env.update(overrides)
    return env


def console_script() -> str:
    """The installed `charlm` script (beside this Python when not on PATH), or a skip."""
    found = shutil.which("charlm")
    if found is None:
        beside = Path(sys.executable).with_name("charlm")
        if beside.is_file():
            found = str(beside)
    if found is None:
        pytest.skip("the charlm console script is not installed (pip install -e .)")
    return found


def charlm_command(*args: str, how: str = "module") -> list[str]:
    """The argv that runs charlm ARGS: `python -m charlm` (module), the `python train.py` /
    `python generate.py` shim at the repository root (shim), or the console script (script)."""
    if how == "module":
        return [sys.executable, "-m", "charlm", *args]
    if how == "shim":
        return [sys.executable, f"{args[0]}.py", *args[1:]]
    if how == "script":
        return [console_script(), *args]
    raise ValueError(how)


def run_cli(
    *args: str,
    how: str = "module",
    env: Optional[dict[str, str]] = None,
    cwd: Optional[Path] = None,
    timeout: float = 180,
    stdin: Optional[bytes] = None,
    preexec_fn: Optional[Callable[[], None]] = None,
) -> Finished:
    """Run charlm ARGS in a child process (see charlm_command for `how`); stdin is the bytes
    it reads, else nothing. A shim runs in the repository root, whatever cwd says."""
    done = subprocess.run(
        charlm_command(*args, how=how),
        capture_output=True,
        env=env if env is not None else child_env(),
        cwd=REPO if how == "shim" or cwd is None else cwd,
        timeout=timeout,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        preexec_fn=preexec_fn,
    )
    return Finished(done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8"))


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn for run_cli or Popen: the child's files may not grow past max_bytes, so a
    write beyond that fails with EFBIG, as on a full disk (SIGXFSZ ignored: an error, not a kill)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def invoke(
    *args: str,
    env: Optional[dict[str, str]] = None,
    input: Union[str, bytes, None] = None,
    catch_exceptions: bool = True,
) -> Result:
    """Run the CLI in this process with click's test runner (stdout and stderr kept apart);
    input is what it reads on stdin."""
    from charlm.cli import cli  # here, so importing the helpers never depends on the CLI importing

    return CliRunner().invoke(cli, list(args), prog_name="charlm", env=env, input=input,
                              catch_exceptions=catch_exceptions)  # fmt: skip


def assert_user_error(result, *needles: str, status: Optional[int] = None, alone: bool = True) -> str:
    """A user error, from invoke() or run_cli(): a non-zero exit (`status` when given), no
    traceback, nothing on stdout, and stderr ending with exactly one "charlm: error: ..."
    line that holds every needle. alone: that line is all of stderr (errors found before any
    work starts); otherwise notes of the work done so far may precede it. In this process
    the CLI must end with sys.exit, not raise. Returns the error line."""
    if isinstance(result, Result):
        assert isinstance(result.exception, SystemExit), (
            f"the CLI raised {type(result.exception).__name__}: {result.exception!r}"
        )
        returncode = result.exit_code
    else:
        returncode = result.returncode
    stdout, stderr = result.stdout, result.stderr
    assert returncode != 0, f"exit status 0 for a user error; stderr:\n{stderr}"
    if status is not None:
        assert returncode == status, f"exit status {returncode}, not {status}; stderr:\n{stderr}"
    assert "Traceback" not in stdout + stderr, stderr
    assert stdout == "", f"stdout should be empty on an error, got {stdout!r}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_PREFIX in line]
    assert len(errors) == 1, f"expected one error line, got:\n{stderr}"
    error = errors[0]
    assert error.startswith(ERROR_PREFIX), error
    assert error[len(ERROR_PREFIX) :].strip(), "the error line has no message"
    assert lines[-1] == error, f"the error line must come last:\n{stderr}"
    if alone:
        assert lines == [error], f"expected only the error line on stderr, got:\n{stderr}"
    for needle in needles:
        assert needle in error, f"{needle!r} not in: {error}"
    return error


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and modification time of every file below folder."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def entries(folder: Path) -> list[str]:
    """The names in a folder, hidden ones included (work folders, temporary files); [] when
    it is not a folder."""
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def hidden_entries(folder: Path) -> list[str]:
    """The hidden names in a folder: what an interrupted write would leave behind."""
    return [name for name in entries(folder) if name.startswith(".")]
