"""The error family: write_error's wording for each kind of failed write, OptionError as the
library and the command line each say it, CHARLM_DEBUG=1's traceback chain, and the one
version source.

Covers: a full disk, quota or file size limit (ENOSPC, EDQUOT, EFBIG), no permission (EACCES,
EPERM, and a real refusal from /sys), a read-only file system (EROFS) and any other failure
each worded with the fix that fits; OptionError naming the field for a library caller and
the flag (and the environment variable it came from) on the command line; CHARLM_DEBUG=1
adding the whole chain after the one line, `from None` causes included, in this process and
in a real child; charlm.__version__ read from the package metadata, with a fallback.
"""

from __future__ import annotations

import errno
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, SAFE, assert_user_error, child_env, invoke, numbered_lines, run_cli, write_text

import charlm
from charlm.config import TrainConfig
from charlm.errors import CharlmError, OptionError, is_write_failure, write_error

FIX = "set CHARLM_CACHE_DIR to a writable folder with room"


def failed_write(number: int) -> OSError:
    return OSError(number, os.strerror(number))


# ----- write_error -------------------------------------------------------------------------


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG], ids=["ENOSPC", "EDQUOT", "EFBIG"])
def test_a_full_disk_says_to_free_space(number):
    error = write_error(failed_write(number), "the token cache", "/data/cache", FIX)
    assert isinstance(error, CharlmError)
    text = str(error)
    assert text.startswith("no space left to write the token cache in /data/cache")
    assert f"({os.strerror(number)})" in text
    assert text.endswith(f"free some disk space or {FIX}, then run again")


@pytest.mark.parametrize("number", [errno.EACCES, errno.EPERM], ids=["EACCES", "EPERM"])
def test_no_permission_says_to_choose_a_folder_one_may_write_to(number):
    text = str(write_error(failed_write(number), "the run's tokenizer and config", "/srv/run", "choose another --out"))
    assert text.startswith("permission denied writing the run's tokenizer and config in /srv/run")
    assert "choose a folder you may write to or choose another --out" in text
    assert "no space" not in text and "disk space" not in text


def test_a_read_only_file_system_says_so():
    text = str(
        write_error(failed_write(errno.EROFS), "the checkpoint at step 5", "/mnt/ro/run", "choose another --out")
    )
    assert text == "cannot write the checkpoint at step 5 in /mnt/ro/run: the file system there is read-only; " \
                   "choose another --out"  # fmt: skip


@pytest.mark.parametrize("number", [errno.EIO, errno.ENOTDIR, errno.EEXIST], ids=["EIO", "ENOTDIR", "EEXIST"])
def test_other_failures_keep_the_plain_wording(number):
    text = str(write_error(failed_write(number), "the token cache", "/data/cache", FIX))
    assert text == f"cannot write the token cache in /data/cache ({os.strerror(number)}); {FIX}"


def test_a_real_refusal_is_worded_as_permission():
    """As root, permission bits say nothing; /sys refuses new files all the same."""
    try:
        with open("/sys/charlm-write-test", "w"):
            pass
    except OSError as exc:
        caught = exc
    else:
        os.unlink("/sys/charlm-write-test")
        pytest.skip("/sys accepted a new file here")
    if caught.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        pytest.skip(f"/sys refused with {errno.errorcode.get(caught.errno)}")
    assert is_write_failure(caught)
    text = str(write_error(caught, "the token cache", "/sys", FIX))
    assert "permission denied" in text or "read-only" in text


def test_only_write_errnos_count_as_write_failures():
    assert all(is_write_failure(failed_write(n)) for n in (errno.ENOSPC, errno.EACCES, errno.EROFS))
    assert not is_write_failure(failed_write(errno.ECONNRESET))
    assert not is_write_failure(ValueError("not an OSError"))


# ----- OptionError ---------------------------------------------------------------------------


def test_option_errors_name_the_field_for_a_library_caller():
    with pytest.raises(OptionError) as info:
        TrainConfig(lr=-1.0).validate()
    error = info.value
    assert (error.option, error.problem) == ("lr", "must be positive (got -1.0)")
    assert str(error) == "lr must be positive (got -1.0)"
    assert error.spelled("--lr") == "--lr must be positive (got -1.0)"
    assert isinstance(error, CharlmError)


def test_an_option_error_quoted_in_a_longer_message_keeps_its_field():
    quoted = OptionError("hidden", "must be at least 1 (got -3)").within("config.json: ", "; restore it")
    assert quoted.option == "hidden"
    assert str(quoted) == "config.json: hidden must be at least 1 (got -3); restore it"
    assert quoted.spelled("--hidden") == "config.json: --hidden must be at least 1 (got -3); restore it"


def test_the_command_line_names_the_flag(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    result = invoke("train", "--data", str(corpus), "--out", str(tmp_path / "run"), *SAFE, "--lr", "-1")
    assert assert_user_error(result, status=1) == "charlm: error: --lr must be positive (got -1.0)"


def test_a_field_set_by_another_flag_is_named_by_that_flag(tmp_path):
    """checkpoint_seconds comes from --checkpoint-every, which only a hand-edited config can make bad."""
    with pytest.raises(OptionError) as info:
        TrainConfig(checkpoint_seconds=-5.0).validate()
    assert str(info.value).startswith("checkpoint_seconds must be a positive time")
    from charlm.cli.options import option_message

    assert option_message(info.value).startswith("--checkpoint-every must be a positive time (got -5.0 s)")


def test_a_value_from_the_environment_is_named_by_its_variable(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    result = invoke("train", "--data", str(corpus), "--out", str(tmp_path / "run"), *SAFE,
                    env={"CHARLM_TRAIN_WARMUP_STEPS": "-2"})  # fmt: skip
    error = assert_user_error(result, status=1)
    assert error == ("charlm: error: --warmup-steps must be 0 or more (got -2) "
                     "(set by the environment variable CHARLM_TRAIN_WARMUP_STEPS)")  # fmt: skip


@pytest.mark.parametrize(
    "command, variable, value, expected",
    [
        (
            "generate",
            "CHARLM_GENERATE_TEMPERATURE",
            "-1",
            "--temperature must be 0 (greedy) or a finite positive number",
        ),
        ("generate", "CHARLM_GENERATE_NUM_SAMPLES", "0", "--num-samples must be at least 1 (got 0)"),
    ],
)
def test_generate_names_the_variable_a_bad_value_came_from(tmp_path, command, variable, value, expected):
    result = invoke(command, str(tmp_path / "no-run"), env={variable: value})
    error = assert_user_error(result, status=1)
    assert error.startswith(f"charlm: error: {expected}") and error.endswith(
        f"(set by the environment variable {variable})"
    )


# ----- CHARLM_DEBUG --------------------------------------------------------------------------


def _unwritable_out_args(tmp_path) -> list[str]:
    """A train command refused with an error raised `from None` over an OSError."""
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc here")
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    return ["train", "--data", str(corpus), "--out", "/proc/charlm-debug-test", *SAFE]


def _check_debug_output(stderr: str) -> None:
    lines = stderr.splitlines()
    assert lines[0].startswith("charlm: error: --out /proc/charlm-debug-test: cannot create a folder in /proc")
    chain = "\n".join(lines[1:])
    assert chain.startswith("Traceback (most recent call last):"), stderr
    # the OSError behind the one line, hidden from Python's own display by `from None`
    assert "FileNotFoundError" in chain or "PermissionError" in chain or "OSError" in chain
    assert "(hidden by 'from None')" in chain
    assert chain.rstrip().splitlines()[-1].startswith("charlm.errors.OptionError: out /proc/charlm-debug-test")


def test_debug_shows_the_chain_after_the_one_line(tmp_path):
    args = _unwritable_out_args(tmp_path)
    plain = invoke(*args)
    assert_user_error(plain, "cannot create a folder in /proc")  # alone: one line, no traceback
    for off in ("", "0"):
        assert invoke(*args, env={"CHARLM_DEBUG": off}).stderr == plain.stderr
    debug = invoke(*args, env={"CHARLM_DEBUG": "1"})
    assert debug.exit_code == 1 and debug.stdout == ""
    _check_debug_output(debug.stderr)


@pytest.mark.slow
def test_debug_in_a_real_process(tmp_path):
    args = _unwritable_out_args(tmp_path)
    done = run_cli(*args, env=child_env(CHARLM_DEBUG="1"), cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    _check_debug_output(done.stderr)


# ----- the version ---------------------------------------------------------------------------


def test_the_version_comes_from_pyproject():
    declared = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert charlm.__version__ == importlib.metadata.version("charlm") == declared
    assert f'"{declared}"' not in (REPO / "charlm" / "__init__.py").read_text()  # no second copy


@pytest.mark.slow
def test_an_uninstalled_source_tree_still_has_a_version(tmp_path):
    """Without package metadata (a source tree on PYTHONPATH), charlm still imports and says so."""
    code = (
        "import importlib.metadata as m\n"
        "def absent(name):\n"
        "    raise m.PackageNotFoundError(name)\n"
        "m.version = absent\n"
        "import charlm\n"
        "print(charlm.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=child_env(PYTHONPATH=str(REPO)), timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0+unknown"
