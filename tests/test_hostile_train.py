"""`charlm train` fed hostile input: corpora, option values, output folders and a full disk.

Each bad input must end with one "charlm: error: ..." line naming the problem and the fix,
exit status 1 (2 for click usage errors), no traceback, and nothing lost: an --out that did
not exist does not exist afterwards, an existing run is untouched, and no partial or stale
token-cache folder is left for a later run to read. Inputs that are odd but valid (a corpus
of one repeated character, a single line of megabytes with no newline) must train.

Covered here:
  * --data / --val-data / --test-data: binary files (PNG, ELF, zip headers), /dev/null,
    /dev/zero, a FIFO and a socket (refused, never a hang: real processes with a timeout),
    folders with no text, only binary files, or a FIFO, a symlink loop and an unreadable
    entry beside a text file, one character, 100k x "a", a 5 MB single line, a corpus
    deleted before --resume, a damaged cache folder;
  * sentencepiece --vocab-size beyond what the corpus supports, or beyond any sane size;
  * every float option non-finite, --threads beyond the machine, a model or batch that
    cannot fit in memory (refused before allocating), bad CHARLM_TRAIN_* variables;
  * --out that is a file, lies below a file, or cannot be written (/proc, /sys);
  * a full disk while the token cache or the run's config and tokenizer are written: a real
    process under RLIMIT_FSIZE (EFBIG), and a real tiny tmpfs (ENOSPC) where mounts work.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    REPO,
    SAFE,
    Finished,
    assert_user_error,
    child_env,
    end_event,
    entries,
    file_size_limit,
    invoke,
    numbered_lines,
    of_kind,
    read_config,
    read_events,
    run_cli,
    snapshot,
    write_text,
)

from charlm.config import MAX_SPM_VOCAB, ModelConfig, TrainConfig
from charlm.errors import OptionError
from charlm.models.rnnlm import RNNLM, count_parameters, training_memory_bytes
from charlm.text.corpus import prepare_corpus

# Hidden 16 and batches of 2 x 8: each successful run here takes about a second.
FAST = ["--hidden", "16", "--layers", "1", "--embed", "8", "--threads", "1", "--sample-length", "0",
        "--batch-size", "2", "--seq-len", "8", "--max-steps", "2", "--eval-every", "100"]  # fmt: skip


# ---------------------------------------------------------------------------------------
# corpora that are not text, or not files


BINARY_HEADERS = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "elf": b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
}


def binary_file(path: Path, kind: str) -> Path:
    body = random.Random(kind).randbytes(20_000)
    path.write_bytes(BINARY_HEADERS[kind] + body)
    return path


@pytest.mark.parametrize("kind", sorted(BINARY_HEADERS))
@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_a_binary_file_is_refused_even_with_encoding_errors_replace(kind, errors, tmp_path):
    corpus = binary_file(tmp_path / f"data.{kind}", kind)
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--encoding-errors", errors, *SAFE)
    error = assert_user_error(result)
    assert result.exit_code == 1
    assert str(corpus) in error and "binary file" in error and "UTF-8 text" in error
    assert not out.exists()


def test_invalid_utf8_without_nul_bytes_names_the_byte(tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE)
    error = assert_user_error(result, alone=False)
    assert "byte 3 (line 1) is not valid UTF-8" in error and "--encoding-errors replace" in error
    assert not out.exists()


@pytest.mark.parametrize("option", ["--data", "--val-data", "--test-data"])
@pytest.mark.parametrize("special", ["/dev/null", "socket"])
def test_devices_and_sockets_are_not_corpora(option, special, tmp_path):
    if special == "socket":
        path = tmp_path / "sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        special = str(path)
    corpus = write_text(tmp_path / "ok.txt", numbered_lines())
    args = ["--data", str(corpus)] if option != "--data" else []
    out = tmp_path / "run"
    result = invoke("train", *args, option, special, "--out", str(out), *SAFE)
    error = assert_user_error(result, alone=False)
    assert f"{option}: {special} is neither a regular file nor a folder" in error and "give a text file" in error
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_endless_or_blocking_files_are_refused_without_hanging(special, tmp_path):
    """Reading /dev/zero never ends and opening a FIFO waits for a writer: a real process
    must refuse both at once (the timeout turns a hang into a failure)."""
    if special == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
        special = str(path)
    out = tmp_path / "run"
    done = run_cli("train", "--data", special, "--out", str(out), *SAFE, timeout=60)
    error = assert_user_error(done)
    assert done.returncode == 1
    assert "is neither a regular file nor a folder" in error
    assert not out.exists()


def folder_of_junk(root: Path) -> Path:
    """A folder holding only things that are not text files: a binary file, a FIFO, a link
    to itself (a loop), a link to its parent folder, and a link to /proc/self/mem (a regular
    file that cannot be read)."""
    root.mkdir()
    binary_file(root / "image.png", "png")
    os.mkfifo(root / "pipe.txt")
    os.symlink("loop.txt", root / "loop.txt")
    os.symlink("..", root / "up")
    if Path("/proc/self/mem").exists():
        os.symlink("/proc/self/mem", root / "mem.txt")
    return root


def test_a_folder_of_junk_has_no_text_files(tmp_path):
    root = folder_of_junk(tmp_path / "junk")
    out = tmp_path / "run"
    result = invoke("train", "--data", str(root), "--out", str(out), *SAFE)
    error = assert_user_error(result)
    assert f"folder {root} has no text files" in error and "binary or unreadable file(s) skipped" in error
    assert not out.exists()


def test_an_empty_folder_has_no_text_files(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), *SAFE)
    assert "has no text files" in assert_user_error(result)


def test_junk_beside_a_text_file_is_skipped(tmp_path):
    root = folder_of_junk(tmp_path / "mixed")
    text = write_text(root / "a.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(root), "--out", str(out), *FAST)
    assert result.exit_code == 0, result.stderr
    assert "skipped" in result.stderr and "binary or unreadable" in result.stderr
    assert read_config(out)["model"]["vocab_size"] == len(set(text.read_text())) + 1


def test_an_unreadable_file_named_directly_is_an_error(tmp_path):
    if not Path("/proc/self/mem").exists():
        pytest.skip("no /proc/self/mem here")
    out = tmp_path / "run"
    result = invoke("train", "--data", "/proc/self/mem", "--out", str(out), *SAFE)
    error = assert_user_error(result)
    assert "cannot read" in error and "mem" in error
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# odd but valid text


def test_a_corpus_of_one_character_asks_for_more_text(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("a")
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE, "--batch-size", "1", "--seq-len", "1")
    error = assert_user_error(result, alone=False)
    assert "--batch-size 1 x --seq-len 1 needs at least 2" in error and "give more text" in error
    assert not out.exists()


@pytest.mark.parametrize("tokenizer", ["char", "byte", "sentencepiece"])
def test_one_character_repeated_trains(tokenizer, tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("a" * 100_000)
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--tokenizer", tokenizer,
                    "--vocab-size", "300", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "last" / "model.safetensors").is_file()
    assert end_event(out)["step"] == 2
    if tokenizer == "char":
        assert read_config(out)["model"]["vocab_size"] == 2  # the unknown symbol and "a"
    if tokenizer == "sentencepiece":  # it cannot find 300 pieces in "aaaa...": it says so
        assert "--vocab-size 300: sentencepiece found only" in result.stderr


@pytest.mark.parametrize("tokenizer", ["char", "byte", "sentencepiece"])
def test_a_single_line_of_five_megabytes_trains(tokenizer, tmp_path):
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "\u00e4\u00f6\u00fc", "\u65e5\u672c"]
    rng = random.Random(5)
    line = " ".join(rng.choice(words) for _ in range(1_000_000))[:5_000_000]
    corpus = tmp_path / "line.txt"
    corpus.write_text(line, encoding="utf-8")
    assert "\n" not in line
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--tokenizer", tokenizer,
                    "--vocab-size", "400", "--val-fraction", "0.01", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "last" / "model.safetensors").is_file()
    end = end_event(out)
    assert (end["step"], end["reason"]) == (2, "max_steps") and math.isfinite(end["last_val_loss"])
    (start,) = of_kind(read_events(out), "start")
    train_text = line[: len(line) - int(len(line) * 0.01)]  # the split is cut in characters
    if tokenizer == "char":
        assert start["train_tokens"] == len(train_text)
    elif tokenizer == "byte":
        assert start["train_tokens"] == len(train_text.encode("utf-8"))
    else:
        assert 0 < start["train_tokens"] < len(train_text)


# ---------------------------------------------------------------------------------------
# sentencepiece vocabulary sizes


def test_sentencepiece_vocab_beyond_the_corpus_trains_and_says_so(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--tokenizer", "sentencepiece",
                    "--vocab-size", "5000", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    vocab = read_config(out)["model"]["vocab_size"]
    assert 260 < vocab < 5000
    assert f"--vocab-size 5,000: sentencepiece found only {vocab:,} pieces in this corpus" in result.stderr


def test_sentencepiece_vocab_beyond_any_sane_size_is_refused(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE, "--tokenizer", "sentencepiece",
                    "--vocab-size", "10000000000")  # fmt: skip
    error = assert_user_error(result)
    assert f"--vocab-size must be at most {MAX_SPM_VOCAB:,}" in error
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# option values


def _float_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.type in ("float", "Optional[float]")]


def refused_option(option: str, value: str, tmp_path: Path) -> str:
    """`charlm train OPTION VALUE` on a good corpus: one error line alone, exit 1, no run
    folder made. Returns the line."""
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    error = assert_user_error(invoke("train", "--data", str(corpus), "--out", str(out), *SAFE, option, value),
                              status=1)  # fmt: skip
    assert not out.exists()
    return error


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_option_must_be_finite(value):
    """Every float field, including ones added later, rejects nan and inf by name."""
    for cls, base in ((TrainConfig, {}), (ModelConfig, {"vocab_size": 10})):
        names = _float_fields(cls)
        assert names, cls
        for name in names:
            config = cls(**base, **{name: value})
            with pytest.raises(OptionError) as info:
                config.validate()
            assert info.value.option == name  # the CLI says --name; the library the field's own name
            assert str(info.value).startswith(f"{name} must be a finite number"), str(info.value)


@pytest.mark.parametrize(
    "option, value",
    [("--lr", "nan"), ("--lr", "inf"), ("--max-time", "inf"), ("--max-time", "nan"), ("--dropout", "nan"),
     ("--grad-clip", "nan"), ("--grad-clip", "inf"), ("--weight-decay", "inf"), ("--epochs", "inf"),
     ("--val-fraction", "nan")],
)  # fmt: skip
def test_non_finite_options_on_the_command_line(option, value, tmp_path):
    error = refused_option(option, value, tmp_path)
    assert f"{option} must be a finite number (got {value})" in error


@pytest.mark.parametrize(
    "option, value",
    [("--hidden", "0"), ("--layers", "0"), ("--embed", "-1"), ("--batch-size", "-4"), ("--seq-len", "0"),
     ("--eval-every", "0"), ("--eval-batch-size", "0"), ("--log-every", "-1"), ("--warmup-steps", "-1"),
     ("--max-steps", "-5"), ("--sample-length", "-1"), ("--max-time", "0"), ("--epochs", "-1")],
)  # fmt: skip
def test_zero_and_negative_sizes_are_refused(option, value, tmp_path):
    error = refused_option(option, value, tmp_path)
    assert error.startswith(f"charlm: error: {option} must be")
    assert float(error.rsplit("(got ", 1)[1].rstrip(")")) == float(value)


@pytest.mark.parametrize("threads", ["0", "-1", "100000"])
def test_threads_beyond_the_machine_are_refused(threads, tmp_path):
    """torch accepts --threads 100000 and OpenMP then dies of a segmentation fault."""
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE, "--threads", threads)
    error = assert_user_error(result)
    assert "--threads" in error
    if threads == "100000":
        cores = os.cpu_count()
        assert f"more than the {cores} CPU core(s)" in error and f"--threads {cores} or fewer" in error
    assert not out.exists()


@pytest.mark.parametrize(
    "options",
    [["--hidden", "1000000"], ["--layers", "100000", "--hidden", "1024"], ["--embed", "100000000"],
     ["--batch-size", "1000000", "--seq-len", "100000"]],
    ids=["hidden", "layers", "embed", "batch"],
)  # fmt: skip
def test_a_model_that_cannot_fit_is_refused_before_allocating(options, tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE, *options)
    error = assert_user_error(result)  # alone: refused before the corpus is even read
    assert "needs about" in error and "memory available" in error and "lower --hidden" in error
    assert not out.exists()


def test_memory_estimate_counts_the_real_parameters():
    for cell in ("lstm", "gru", "rnn-tanh"):
        for tie in (False, True):
            config = ModelConfig(vocab_size=37, cell=cell, layers=2, hidden=24, embed=16, tie_weights=tie)
            assert count_parameters(config) == RNNLM(config).num_parameters()
    small = ModelConfig(vocab_size=65, hidden=32, embed=16, layers=1)
    assert training_memory_bytes(small, 4, 16) < training_memory_bytes(small, 64, 128)
    assert training_memory_bytes(small, 64, 128, half_activations=True) < training_memory_bytes(small, 64, 128)


@pytest.mark.parametrize(
    "variable, value, code, expected",
    [("CHARLM_TRAIN_HIDDEN", "abc", 2, "'abc' is not a valid integer"),
     ("CHARLM_TRAIN_HIDDEN", "-3", 1, "--hidden must be at least 1"),
     ("CHARLM_TRAIN_LR", "nan", 1, "--lr must be a finite number"),
     ("CHARLM_TRAIN_RESUME", "maybe", 2, "not a valid boolean"),
     ("CHARLM_TRAIN_THREADS", "100000", 1, "--threads 100000 is more than")],
)  # fmt: skip
def test_bad_environment_values_name_the_variable(variable, value, code, expected, tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--max-steps", "2", env={variable: value})
    error = assert_user_error(result)
    assert result.exit_code == code
    assert expected in error and f"set by the environment variable {variable}" in error
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# --out


def test_out_below_a_regular_file_fails_before_the_corpus_is_read(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    result = invoke("train", "--data", str(corpus), "--out", str(corpus / "runs" / "one"), *SAFE)
    error = assert_user_error(result)  # alone: no corpus notes came first
    assert f"{corpus} is a file, so no folder can be made below it" in error


@pytest.mark.parametrize("where", ["/proc", "/sys"])
def test_out_where_nothing_can_be_written(where, tmp_path):
    target = Path(where) / "charlm-test-run"
    if not Path(where).is_dir():
        pytest.skip(f"no {where} here")
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    result = invoke("train", "--data", str(corpus), "--out", str(target), *SAFE)
    error = assert_user_error(result)
    assert f"cannot create a folder in {where}" in error and "choose a writable --out" in error
    assert not target.exists()


def test_out_that_is_a_symlink_loop(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    result = invoke("train", "--data", str(corpus), "--out", str(loop / "run"), *SAFE)
    error = assert_user_error(result)
    assert "broken or looping symbolic link" in error
    assert loop.is_symlink()


# ---------------------------------------------------------------------------------------
# files that change or break between runs


def test_a_corpus_deleted_before_resume_is_named(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    assert invoke("train", "--data", str(corpus), "--out", str(out), *FAST).exit_code == 0
    before = snapshot(out)
    corpus.unlink()
    result = invoke("train", "--out", str(out), "--resume", "--max-steps", "4")
    error = assert_user_error(result)
    assert "--data" in error and str(corpus) in error
    assert snapshot(out) == before


def test_a_damaged_cache_folder_is_rebuilt_not_trusted(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    cache = tmp_path / "cache"
    first = prepare_corpus(str(corpus), cache_root=cache)
    expected = {name: first.splits[name].tolist() for name in first.splits}
    del first
    train = next(cache.iterdir()) / "train.npy"
    train.write_bytes(train.read_bytes()[:-100])  # torn, as by a disk fault
    again = prepare_corpus(str(corpus), cache_root=cache)
    assert again.from_cache is False
    assert {name: again.splits[name].tolist() for name in again.splits} == expected
    assert len(entries(cache)) == 1  # the damaged folder is gone, no leftovers


# ---------------------------------------------------------------------------------------
# a full disk


@pytest.mark.slow
def test_a_full_disk_while_the_cache_is_written_leaves_no_cache_and_no_run(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    cache, out = tmp_path / "cache", tmp_path / "run"
    env = child_env(CHARLM_CACHE_DIR=str(cache))
    done = run_cli("train", "--data", str(corpus), "--out", str(out), *SAFE, env=env,
                 preexec_fn=file_size_limit(2000))  # fmt: skip
    error = assert_user_error(done, alone=False)
    assert done.returncode == 1
    assert f"no space left to write the token cache in {cache}" in error and "free some disk space" in error
    assert "CHARLM_CACHE_DIR" in error
    assert entries(cache) == []  # neither the cache folder nor a hidden work folder
    assert not out.exists()


def test_a_cache_folder_that_cannot_be_written_names_the_variable(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE, env={"CHARLM_CACHE_DIR": str(corpus)})
    error = assert_user_error(result, alone=False)
    assert f"cannot write the token cache in {corpus}" in error and "set CHARLM_CACHE_DIR to a writable folder" in error
    assert corpus.is_file() and not out.exists()


@pytest.mark.slow
def test_a_full_disk_while_the_run_is_created_leaves_nothing(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    cache = tmp_path / "cache"
    prepare_corpus(str(corpus), cache_root=cache)  # the cache fits; config.json (about 1 KB) will not
    env = child_env(CHARLM_CACHE_DIR=str(cache))
    out = tmp_path / "new" / "deeper" / "run"
    done = run_cli("train", "--data", str(corpus), "--out", str(out), *SAFE, env=env,
                 preexec_fn=file_size_limit(600))  # fmt: skip
    error = assert_user_error(done, alone=False)
    assert f"no space left to write the run's tokenizer and config in {out}" in error
    assert not (tmp_path / "new").exists()  # the parents made for it are gone too


@pytest.mark.slow
def test_a_full_disk_on_overwrite_keeps_the_old_run(tmp_path):
    corpus = write_text(tmp_path / "small.txt", numbered_lines())
    out = tmp_path / "run"
    env = child_env(CHARLM_CACHE_DIR=str(tmp_path / "cache"))
    first = run_cli("train", "--data", str(corpus), "--out", str(out), *FAST, env=env)
    assert first.returncode == 0, first.stderr
    before = snapshot(out)
    done = run_cli("train", "--data", str(corpus), "--out", str(out), "--overwrite", *FAST, env=env,
                 preexec_fn=file_size_limit(600))  # fmt: skip
    error = assert_user_error(done, alone=False)
    assert "no space left" in error
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["cache", "run", "small.txt"]  # no staging folder left


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    done = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True, timeout=30)  # fmt: skip
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and mount namespaces (unshare -m)")
@pytest.mark.parametrize("what", ["cache", "run"])
def test_a_real_full_tmpfs_gives_enospc_and_leaves_nothing(what, tmp_path):
    """A 64 KB tmpfs in a private mount namespace: writes fail with ENOSPC for real. The
    shell lists what is left on it before the namespace (and the tmpfs) goes away."""
    corpus = write_text(tmp_path / "mid.txt", numbered_lines(4000))  # about 220 KB: more than fits
    disk = tmp_path / "disk"
    disk.mkdir()
    if what == "cache":
        cache, out, fill = disk / "cache", tmp_path / "run", ""
    else:
        cache, out = tmp_path / "cache", disk / "run"
        prepare_corpus(str(corpus), cache_root=cache)
        fill = f"dd if=/dev/zero of={disk}/filler bs=4096 count=15 2>/dev/null; "  # one page left
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {disk} && {fill}"
        f"{sys.executable} -m charlm train --data {corpus} --out {out} {' '.join(SAFE)}; "
        f"status=$?; echo; echo LEFT; find {disk} -mindepth 1; exit $status"
    )
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, timeout=120, cwd=REPO,
                          env=child_env(CHARLM_CACHE_DIR=str(cache)))  # fmt: skip
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    text, left = stdout.split("LEFT\n")
    error = assert_user_error(Finished(done.returncode, text.strip(), stderr), alone=False)
    assert "(No space left on device)" in error and "free some disk space" in error
    # the cache case leaves its empty root (no entry, no work folder), the run case only the filler
    assert left.split() == [str(disk / ("cache" if what == "cache" else "filler"))]
