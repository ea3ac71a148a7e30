"""The `charlm train` command line, end to end.

Covered here:
  * real training runs in a subprocess (`python -m charlm`, the `python train.py` shim at
    the repository root, the installed `charlm` console script): exit status, the files of
    the run directory, metrics.jsonl events, generated text alone on stdout and plain log
    lines (no terminal control sequences) on stderr;
  * named corpora: `--data shakespeare` served from a local mirror and cached in
    CHARLM_DATA_DIR, the offline fallback to pystdlib when no --data is given, and the token
    cache being reused by a second run;
  * --resume (continuing to a higher --max-steps, refusing a changed model option),
    Ctrl-C (SIGINT) stopping with a checkpoint and exit status 130 and resuming from it,
    --overwrite, and option values taken from CHARLM_TRAIN_* environment variables;
  * user errors: each ends with exactly one "charlm: error: ..." line on stderr, a non-zero
    exit status, no traceback, and no run directory created or changed;
  * --version, the help printed with no arguments, and `charlm train -h`.

Every model is tiny (one layer of 32 units) and every run stops after a few dozen steps,
so the file runs in well under two minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    SAFE,
    TINY,
    TINY_MODEL,
    Finished,
    assert_user_error,
    child_env,
    end_event,
    invoke,
    kinds,
    numbered_lines,
    read_config,
    read_events,
    run_cli,
    snapshot,
    word_text,
    write_text,
)

import charlm

# Valid UTF-8 except one byte 0xff at offset 1,202 on line 101.
BAD_UTF8_OFFSET, BAD_UTF8_LINE = 1202, 101
BAD_UTF8 = b"hello world\n" * 100 + b"ab\xffcd\n" + b"the quick brown fox jumps over the lazy dog\n" * 60


# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> tuple[Path, Finished]:
    """One 30-step run on 40 KB of generated text in a real process (python -m charlm)."""
    root = tmp_path_factory.mktemp("base-run")
    corpus = write_text(root / "corpus.txt", word_text(40_000))
    out = root / "run"
    done = run_cli("train", "--data", str(corpus), "--out", str(out), "--max-steps", "30", *TINY,
                   env=child_env(data_dir=root / "data"), cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.fixture(scope="module")
def made_run(tmp_path_factory) -> Path:
    """A 30-step run trained in this process, shared read-only: tests copy it first."""
    root = tmp_path_factory.mktemp("made-run")
    corpus = write_text(root / "corpus.txt", numbered_lines())
    out = root / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--max-steps", "30", *TINY,
                    env={"CHARLM_DATA_DIR": str(root / "data")})  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def existing_run(made_run, tmp_path) -> Path:
    """A private copy of the shared run (modification times kept)."""
    target = tmp_path / "existing"
    shutil.copytree(made_run, target)
    return target


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """About 6,500 characters of numbered lines: plenty for --batch-size 4 --seq-len 16."""
    return write_text(tmp_path / "small.txt", numbered_lines())


# ---------------------------------------------------------------------------------------
# end to end


def check_finished_run(out: Path, done: Finished, steps: int) -> None:
    """What every successful run must leave: exit 0, the run files, the sample on stdout."""
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "last/model.safetensors",
                 "last/trainer_state.pt", "best/model.safetensors"):  # fmt: skip
        assert (out / name).is_file(), f"{name} missing from the run directory"
    end = end_event(out)
    assert end["step"] == steps
    assert end["reason"] == "max_steps"
    assert done.stdout.strip(), "no sample text on stdout"
    assert f"run directory: {out}" in done.stderr


@pytest.mark.slow
def test_train_end_to_end_on_a_corpus_file(base_run):
    out, done = base_run
    check_finished_run(out, done, steps=30)

    config = read_config(out)
    assert config["model"]["hidden"] == 32 and config["model"]["layers"] == 1 and config["model"]["embed"] == 16
    assert config["train"]["max_steps"] == 30 and config["train"]["batch_size"] == 4
    assert config["charlm_version"] == charlm.__version__

    events = read_events(out)
    seen = kinds(events)
    assert seen[0] == "start" and seen[-1] == "end"
    assert {"start", "train", "eval", "checkpoint", "end"} <= set(seen)
    assert [e["step"] for e in events if e["event"] == "eval"] == [10, 20, 30]
    assert all(isinstance(e["loss"], float) for e in events if e["event"] in ("train", "eval"))

    # stdout is the sample and nothing else: 50 characters of the corpus alphabet + newline
    tokenizer = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    alphabet = {chr(c) for c in tokenizer["code_points"]} | {"\ufffd"}
    assert done.stdout.endswith("\n")
    sample = done.stdout[:-1]
    assert len(sample) == 50, repr(done.stdout)
    assert set(sample) <= alphabet, f"stdout holds characters the model cannot produce: {done.stdout!r}"
    for log_text in ("run directory", "eval step", "stopped at step", "sample from", "charlm"):
        assert log_text not in done.stdout

    # stderr: plain log lines, since it is a pipe, not a terminal
    assert "\x1b[" not in done.stderr, "terminal control sequences on a non-terminal stderr"
    assert "\r" not in done.stderr, "progress-bar redraws on a non-terminal stderr"
    err_lines = done.stderr.splitlines()
    assert sum(line.startswith("eval step") for line in err_lines) == 3
    assert any(line.startswith("stopped at step 30") for line in err_lines)
    assert any(line.startswith("sample from the") for line in err_lines)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["shim", "script"])
def test_train_through_the_shim_and_the_console_script(how, small_corpus, tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", "--data", str(small_corpus), "--out", str(out), "--max-steps", "20", *TINY,
                   how=how)  # fmt: skip
    check_finished_run(out, done, steps=20)
    assert Path(read_config(out)["train"]["data"]).resolve() == small_corpus.resolve()
    assert "\x1b[" not in done.stderr


@pytest.mark.slow
def test_named_corpus_is_fetched_from_the_mirror_and_cached(shakespeare_mirror, isolated_data_dir, tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", "--data", "shakespeare", "--out", str(out), "--max-steps", "20", *TINY)
    check_finished_run(out, done, steps=20)
    cached = isolated_data_dir / "tinyshakespeare.txt"
    assert cached.is_file(), "the downloaded corpus was not kept under CHARLM_DATA_DIR"
    assert cached.read_bytes() == shakespeare_mirror.read_bytes()
    assert "warning" not in done.stderr and "fallback" not in done.stderr
    assert "corpus shakespeare:" in done.stderr
    assert read_config(out)["train"]["data"] == "shakespeare"
    assert not list(isolated_data_dir.glob(".tinyshakespeare.txt.*")), "a temporary download was left behind"


@pytest.mark.slow
def test_default_corpus_falls_back_to_pystdlib_offline(isolated_data_dir, tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", "--out", str(out), "--max-steps", "5", *TINY)
    check_finished_run(out, done, steps=5)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:") and "fallback" in line]
    assert len(warnings) == 1, done.stderr
    assert "pystdlib" in warnings[0] and "could not download" in warnings[0]
    assert os.environ["CHARLM_SHAKESPEARE_URL"] in warnings[0]
    assert read_config(out)["train"]["data"] == "pystdlib"
    assert not (isolated_data_dir / "tinyshakespeare.txt").exists()
    assert not list(isolated_data_dir.glob(".tinyshakespeare.txt.*")), "a failed download left a file behind"


@pytest.mark.slow
def test_second_run_on_the_same_corpus_uses_the_cache(small_corpus, tmp_path):
    args = ("train", "--data", str(small_corpus), "--max-steps", "3", *TINY, "--sample-length", "0")
    first = run_cli(*args, "--out", str(tmp_path / "one"))
    assert first.returncode == 0, first.stderr
    assert "reading corpus" in first.stderr and "cached" not in first.stderr
    second = run_cli(*args, "--out", str(tmp_path / "two"))
    assert second.returncode == 0, second.stderr
    corpus_lines = [line for line in second.stderr.splitlines() if line.startswith("corpus ")]
    assert len(corpus_lines) == 1 and "cached" in corpus_lines[0], second.stderr
    assert "reading corpus" not in second.stderr
    # --sample-length 0: nothing on stdout
    assert first.stdout == "" and second.stdout == ""


# ---------------------------------------------------------------------------------------
# resume, Ctrl-C, overwrite, environment


@pytest.mark.slow
def test_resume_continues_to_a_higher_max_steps(small_corpus, tmp_path):
    out = tmp_path / "run"
    first = run_cli("train", "--data", str(small_corpus), "--out", str(out), "--max-steps", "20", *TINY,
                    "--sample-length", "0")  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert end_event(out)["step"] == 20
    config_before = (out / "config.json").read_bytes()

    second = run_cli("train", "--out", str(out), "--resume", "--max-steps", "40", "--threads", "1")
    assert second.returncode == 0, second.stderr
    assert "resuming at step 20" in second.stderr
    events = read_events(out)
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] == 20
    after = events[events.index(resumes[0]) :]
    assert after[-1]["event"] == "end" and after[-1]["step"] == 40 and after[-1]["reason"] == "max_steps"
    assert [e["step"] for e in after if e["event"] == "eval"] == [30, 40]
    assert [e["step"] for e in events if e["event"] == "end"] == [20, 40]
    state = torch.load(out / "last" / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 40
    # the model and corpus are fixed by the run
    assert read_config(out)["model"] == json.loads(config_before)["model"]


@pytest.mark.slow
def test_resume_keeps_new_limits_and_refuses_a_finished_run(small_corpus, tmp_path):
    out = tmp_path / "run"
    first = run_cli("train", "--data", str(small_corpus), "--out", str(out), *SAFE, "--sample-length", "0")
    assert first.returncode == 0, first.stderr
    second = run_cli("train", "--out", str(out), "--resume", "--max-steps", "8", "--threads", "1")
    assert second.returncode == 0, second.stderr
    assert read_config(out)["train"]["max_steps"] == 8  # the raised limit is the run's limit now
    weights = (out / "last" / "model.safetensors").read_bytes()

    third = run_cli("train", "--out", str(out), "--resume", "--threads", "1")
    error = assert_user_error(third, alone=False)
    assert "--max-steps" in error and "already reached" in error
    assert (out / "last" / "model.safetensors").read_bytes() == weights
    assert end_event(out)["step"] == 8


def test_resume_refuses_a_changed_model_option(existing_run):
    before = snapshot(existing_run)
    result = invoke("train", "--out", str(existing_run), "--resume", "--hidden", "64")
    error = assert_user_error(result)
    assert "--hidden" in error
    assert snapshot(existing_run) == before


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_the_run_resumes(small_corpus, tmp_path):
    out = tmp_path / "run"
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "charlm", "train", "--data", str(small_corpus), "--out", str(out),
               "--max-time", "60", *TINY, "--log-every", "5", "--eval-every", "50"]  # fmt: skip
    # files, not pipes: a chatty child must never block on a full pipe while we wait
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                env=child_env(), cwd=tmp_path)  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while "train" not in kinds(read_events(out, strict=False)):
                assert proc.poll() is None, f"training ended early:\n{stderr_path.read_text()}"
                assert time.monotonic() < deadline, "no train event within 90 s"
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = stderr_path.read_text(encoding="utf-8")
    assert returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err and str(out) in err
    assert stdout_path.read_bytes() == b"", "an interrupted run prints no sample"
    assert (out / "last" / "trainer_state.pt").is_file()
    end = end_event(out)
    assert end["reason"] == "interrupted"
    stopped_at = end["step"]
    assert stopped_at >= 5
    state = torch.load(out / "last" / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == stopped_at

    resumed = run_cli("train", "--out", str(out), "--resume", "--max-steps", str(stopped_at + 10),
                      "--threads", "1", "--sample-length", "20")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(out)
    assert [e["step"] for e in events if e["event"] == "resume"] == [stopped_at]
    assert events[-1]["event"] == "end"
    assert events[-1]["step"] == stopped_at + 10 and events[-1]["reason"] == "max_steps"
    assert resumed.stdout.strip()


@pytest.mark.slow
def test_overwrite_replaces_an_existing_run(existing_run, small_corpus):
    old_weights = (existing_run / "last" / "model.safetensors").read_bytes()
    done = run_cli("train", "--data", str(small_corpus), "--out", str(existing_run), "--overwrite",
                   "--max-steps", "10", *TINY, "--hidden", "48", "--sample-length", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = read_config(existing_run)
    assert config["model"]["hidden"] == 48
    assert config["train"]["max_steps"] == 10
    events = read_events(existing_run)
    assert kinds(events).count("start") == 1, "metrics.jsonl still holds the old run"
    assert end_event(existing_run)["step"] == 10
    assert (existing_run / "last" / "model.safetensors").read_bytes() != old_weights


@pytest.mark.slow
def test_options_fall_back_to_environment_variables(small_corpus, tmp_path):
    out = tmp_path / "run"
    # --max-time: a safety net, so an ignored variable fails the test in seconds, not minutes
    done = run_cli("train", "--data", str(small_corpus), "--out", str(out), *TINY, "--max-time", "3",
                   env=child_env(CHARLM_TRAIN_MAX_STEPS="5"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    end = end_event(out)
    assert (end["step"], end["reason"]) == (5, "max_steps"), "CHARLM_TRAIN_MAX_STEPS=5 was ignored"
    assert read_config(out)["train"]["max_steps"] == 5
    assert "stops after 5 steps" in done.stderr


# ---------------------------------------------------------------------------------------
# user errors


@pytest.mark.parametrize(
    "options, named",
    [
        (["--lr", "-1"], "--lr"),
        (["--dropout", "1.5"], "--dropout"),
        (["--batch-size", "0"], "--batch-size"),
        (["--cell", "foo"], "--cell"),
        (["--val-fraction", "1.0"], "--val-fraction"),
        (["--tokenizer", "sentencepiece", "--vocab-size", "100"], "--vocab-size"),
        (["--max-steps", "0"], "--max-steps"),
        (["--threads", "0"], "--threads"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_option_values(options, named, small_corpus, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--data", str(small_corpus), "--out", str(out), *SAFE, *options)
    error = assert_user_error(result)
    assert named in error
    assert not out.exists()


def test_unknown_choice_is_a_usage_error(small_corpus, tmp_path):
    result = invoke("train", "--data", str(small_corpus), "--out", str(tmp_path / "run"), "--cell", "foo")
    error = assert_user_error(result)
    assert result.exit_code == 2
    assert "'foo'" in error and "lstm" in error
    assert "charlm train --help" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --device cuda is valid")
def test_device_cuda_without_cuda(small_corpus, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--data", str(small_corpus), "--out", str(out), *SAFE, "--device", "cuda")
    error = assert_user_error(result)
    assert "--device cuda" in error and "CUDA" in error
    assert not out.exists()


def test_missing_data_path(tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "no-such-file.txt"
    result = invoke("train", "--data", str(missing), "--out", str(out), *SAFE)
    error = assert_user_error(result)
    assert "--data" in error and str(missing) in error
    assert not out.exists()


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "is empty"), (b"  \n\t\n   \r\n\n", "only whitespace")],
    ids=["empty", "whitespace-only"],
)
def test_corpus_without_text(content, expected, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE)
    error = assert_user_error(result, alone=False)
    assert expected in error and str(corpus) in error
    assert not out.exists()


@pytest.mark.parametrize("batch, seq, need", [(64, 128, "8,193"), (100, 100, "10,001")])
def test_corpus_too_small_for_the_batch(batch, seq, need, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 60, encoding="utf-8")  # 2,640 chars
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *TINY_MODEL,
                    "--batch-size", str(batch), "--seq-len", str(seq), "--max-steps", "5")  # fmt: skip
    error = assert_user_error(result, alone=False)
    assert need in error, error
    assert "--batch-size" in error and "--seq-len" in error
    assert not out.exists(), f"a failed run left a run directory behind: {sorted(os.listdir(out))}"


def test_corpus_too_small_leaves_an_existing_run_alone(existing_run, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 60, encoding="utf-8")
    before = snapshot(existing_run)
    result = invoke("train", "--data", str(corpus), "--out", str(existing_run), "--overwrite", *TINY_MODEL,
                    "--batch-size", "64", "--seq-len", "128", "--max-steps", "5")  # fmt: skip
    error = assert_user_error(result, alone=False)
    assert "8,193" in error
    assert snapshot(existing_run) == before, "--overwrite destroyed the old run although the new one cannot start"


def test_invalid_utf8_names_the_byte_and_line(tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(BAD_UTF8)
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), *SAFE)
    error = assert_user_error(result, alone=False)
    assert str(corpus) in error
    assert f"byte {BAD_UTF8_OFFSET}" in error and f"line {BAD_UTF8_LINE}" in error
    assert "--encoding-errors" in error
    assert not out.exists()


@pytest.mark.slow
def test_encoding_errors_replace_trains_on_the_same_file(tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(BAD_UTF8)
    out = tmp_path / "run"
    done = run_cli("train", "--data", str(corpus), "--out", str(out), "--encoding-errors", "replace",
                   "--max-steps", "10", *TINY)  # fmt: skip
    check_finished_run(out, done, steps=10)
    tokenizer = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert 0xFFFD in tokenizer["code_points"], "the bad byte should have become U+FFFD"
    assert read_config(out)["train"]["encoding_errors"] == "replace"


def test_out_holding_a_run_needs_resume_or_overwrite(existing_run, small_corpus):
    config_bytes = (existing_run / "config.json").read_bytes()
    weights_mtime = (existing_run / "last" / "model.safetensors").stat().st_mtime_ns
    before = snapshot(existing_run)
    result = invoke("train", "--data", str(small_corpus), "--out", str(existing_run), *SAFE)
    error = assert_user_error(result, alone=False)
    assert "--resume" in error and "--overwrite" in error
    assert (existing_run / "config.json").read_bytes() == config_bytes
    assert (existing_run / "last" / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert snapshot(existing_run) == before


def test_out_not_empty_and_not_a_run(small_corpus, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me\n", encoding="utf-8")
    result = invoke("train", "--data", str(small_corpus), "--out", str(out), *SAFE)
    error = assert_user_error(result, alone=False)
    assert str(out) in error and "not a charlm run" in error
    assert sorted(p.name for p in out.iterdir()) == ["todo.txt"]
    assert (out / "todo.txt").read_text(encoding="utf-8") == "keep me\n"


def test_out_is_a_file(small_corpus, tmp_path):
    out = tmp_path / "file.txt"
    out.write_text("x\n", encoding="utf-8")
    result = invoke("train", "--data", str(small_corpus), "--out", str(out), *SAFE)
    error = assert_user_error(result, alone=False)
    assert str(out) in error
    assert out.read_text(encoding="utf-8") == "x\n"


@pytest.mark.parametrize("exists", [True, False], ids=["empty-folder", "missing-folder"])
def test_resume_without_a_run(exists, tmp_path):
    out = tmp_path / "nothing"
    if exists:
        out.mkdir()
    result = invoke("train", "--out", str(out), "--resume", "--max-steps", "5")
    error = assert_user_error(result)
    assert "--resume" in error and str(out) in error
    assert out.exists() == exists
    if exists:
        assert list(out.iterdir()) == []


def test_resume_without_out():
    result = invoke("train", "--resume", "--max-steps", "5")
    error = assert_user_error(result)
    assert "--resume" in error and "--out" in error


def test_resume_with_overwrite(existing_run):
    before = snapshot(existing_run)
    result = invoke("train", "--out", str(existing_run), "--resume", "--overwrite")
    error = assert_user_error(result)
    assert "--resume" in error and "--overwrite" in error
    assert snapshot(existing_run) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    ["option", "corpus"],
)
def test_user_errors_in_a_real_process(kind, tmp_path):
    """The same contract where it matters most: a real process, its exit status, its stderr."""
    out = tmp_path / "run"
    if kind == "option":
        corpus = write_text(tmp_path / "ok.txt", numbered_lines())
        done = run_cli("train", "--data", str(corpus), "--out", str(out), *SAFE, "--dropout", "1.5")
        error = assert_user_error(done)
        assert "--dropout" in error
    else:
        corpus = tmp_path / "empty.txt"
        corpus.write_bytes(b"")
        done = run_cli("train", "--data", str(corpus), "--out", str(out), *SAFE)
        error = assert_user_error(done, alone=False)
        assert "is empty" in error
    assert done.returncode == 1
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# version and help


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = invoke(flag)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"charlm, version {charlm.__version__}"
    assert result.stderr == ""


@pytest.mark.slow
def test_no_arguments_prints_the_help():
    done = run_cli(how="script")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: charlm")
    assert "train" in done.stdout and "--version" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_train_help(flag):
    result = invoke("train", flag)
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: charlm train")
    for option in ("--data", "--out", "--resume", "--overwrite", "--max-steps", "--encoding-errors"):
        assert option in result.stdout
    assert result.stderr == ""


def test_train_help_names_the_environment_variables():
    """cli.py says options also come from CHARLM_<COMMAND>_<OPTION>, "which --help names"."""
    result = invoke("train", "--help")
    assert result.exit_code == 0
    assert "CHARLM_TRAIN_MAX_STEPS" in result.stdout
