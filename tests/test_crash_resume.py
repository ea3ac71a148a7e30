"""Crash safety and exact resume, with real `charlm train` processes.

One uninterrupted reference run is trained per module. Every other run here uses the same
options and is disturbed on the way (SIGKILL at random moments, SIGTERM, an injected
out-of-memory error, a disk that refuses a checkpoint) and then resumed, as a user would,
until it finishes. Each must end with weights bit-identical to the reference, and with a
metrics.jsonl whose train and eval events are the reference's: no step missing, none twice.

Injected NaNs (CHARLM_FAULTS) show that the divergence guard keeps a run alive: a NaN loss
is skipped, NaN weights are rolled back to the last checkpoint with a lower learning rate.
Everything runs on the CPU in fp32 on one thread, where training is deterministic.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest
import torch
from helpers import (
    assert_user_error,
    charlm_command,
    checkpoint_weights,
    child_env,
    file_size_limit,
    hidden_entries,
    read_events,
    run_cli,
    word_text,
    write_text,
)

from charlm.runs.directory import BEST, LAST, METRICS_FILE, STATE_FILE, WEIGHTS_FILE, RunDirectory

pytestmark = pytest.mark.slow  # every test here runs real training processes, several times over

STEPS = 300
TRAIN_OPTIONS = [
    "--hidden", "32", "--layers", "2", "--embed", "16", "--dropout", "0.2",
    "--batch-size", "4", "--seq-len", "16", "--threads", "1", "--precision", "fp32",
    "--max-steps", str(STEPS), "--checkpoint-every", "1", "--log-every", "3", "--eval-every", "50",
    "--sample-length", "0", "--seed", "7",
]  # fmt: skip


def train_args(corpus: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--data", str(corpus), "--out", str(out), *TRAIN_OPTIONS, *more]


def resume_args(out: Path) -> list[str]:
    return ["train", "--out", str(out), "--resume"]


def run(args: list[str], env: dict[str, str], cwd: Path, preexec_fn=None):
    """charlm ARGS to the end, in a child process."""
    return run_cli(*args, env=env, cwd=cwd, timeout=300, preexec_fn=preexec_fn)


def resume_to_the_end(out: Path, env: dict[str, str], cwd: Path, reference: Path) -> None:
    """Resume the run as a user would and check it ends exactly as the uninterrupted one."""
    done = run(resume_args(out), env, cwd)
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(out, reference)


def progress(out: Path, kind: str) -> list[tuple]:
    """The train or eval events as (step, loss, ...) tuples of the numbers that must repeat exactly."""
    fields = {"train": ("step", "loss", "lr", "grad_norm"), "eval": ("step", "loss", "best")}[kind]
    return [tuple(e[f] for f in fields) for e in read_events(out) if e["event"] == kind]


def assert_same_as_reference(out: Path, reference: Path) -> None:
    for which in (LAST, BEST):
        mine, theirs = checkpoint_weights(out, which), checkpoint_weights(reference, which)
        assert mine.keys() == theirs.keys()
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), f"{which}/{name} differs from the uninterrupted run"
    train = progress(out, "train")
    assert [t[0] for t in train] == list(range(3, STEPS + 1, 3)), "a train event is missing or repeated"
    assert train == progress(reference, "train")
    assert progress(out, "eval") == progress(reference, "eval")
    end = read_events(out)[-1]
    assert end["event"] == "end" and end["reason"] == "max_steps" and end["step"] == STEPS


def assert_loadable(out: Path) -> Optional[int]:
    """The run directory after a crash: its last checkpoint (if any) loads whole. Returns its step."""
    run_dir = RunDirectory(out)
    if not run_dir.is_run() or run_dir.checkpoint_dir(LAST) is None:
        return None
    model, _ = run_dir.load_model(LAST)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = run_dir.load_trainer_state()
    assert run_dir.checkpoint_metadata(LAST)["step"] == state["step"]
    return state["step"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """(corpus, data dir, reference run) for the whole module; the reference is never disturbed."""
    root = tmp_path_factory.mktemp("crash")
    corpus = write_text(root / "corpus.txt", word_text(30_000))
    data_dir = root / "data"
    reference = root / "reference"
    done = run(train_args(corpus, reference), child_env(data_dir), root)
    assert done.returncode == 0, done.stderr
    return corpus, data_dir, reference


def _starts(out: Path) -> int:
    try:
        lines = (out / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    return sum('"event": "start"' in line for line in lines)


def _wait_for_training(out: Path, proc: subprocess.Popen, starts_before: int, deadline: float, step: int = 1) -> bool:
    """Wait until this process has logged a train event at `step` or later (after its own start).

    starts_before: start events in metrics.jsonl before the process was launched; the lines
    after the newest start are this process's. False if the process ended first."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            lines = (out / METRICS_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        starts = [i for i, line in enumerate(lines) if '"event": "start"' in line]
        if len(starts) > starts_before:
            for line in lines[starts[-1] :]:
                if '"event": "train"' in line and json.loads(line)["step"] >= step:
                    return True
        time.sleep(0.005)
    raise AssertionError("the training process made no progress in time")


def test_sigkill_at_random_moments_then_resume_is_bit_identical(setting, tmp_path):
    corpus, data_dir, reference = setting
    out = tmp_path / "run"
    env = child_env(data_dir)
    rng = random.Random(int(os.environ.get("CHARLM_TEST_SEED", "20261125")))
    # the first kill lands in start-up; the others at a random step of their own stretch of the run
    targets = [None] + [rng.randint(low, low + 45) for low in (40, 100, 160, 220)]
    command, resumes, killed_at = train_args(corpus, out), 0, []
    for target in targets:
        starts_before = _starts(out) if command[-1] == "--resume" else 0
        proc = subprocess.Popen(charlm_command(*command), env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        try:
            if target is None:
                # anywhere in start-up: importing, preparing the corpus, writing the run, step 0
                time.sleep(rng.uniform(0.2, 1.5))
            else:
                trained = _wait_for_training(out, proc, starts_before, time.monotonic() + 120, target)
                assert trained, f"the resumed run ended early:\n{proc.stderr.read().decode()}"
                time.sleep(rng.uniform(0.0, 0.03))  # in a step, a log line or a checkpoint write
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        step = assert_loadable(out)
        killed_at.append(step)
        if step is None:
            # killed before the first checkpoint: the user starts the run again
            command = train_args(corpus, out, "--overwrite")
        else:
            command = resume_args(out)
            resumes += 1

    done = run(command, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sum(step is not None for step in killed_at) >= 4, f"checkpoints at the kills: {killed_at}"
    assert killed_at[1:] == sorted(killed_at[1:]) and len(set(killed_at[1:])) == 4  # each kill in a new stretch
    assert_same_as_reference(out, reference)
    # one resume marker per resumed process, and no leftovers of interrupted writes
    assert sum(e["event"] == "resume" for e in read_events(out)) == resumes
    assert hidden_entries(out) == []


def _stop_with_sigterm(args: list[str], out: Path, env: dict[str, str], cwd: Path) -> int:
    """Start a run, SIGTERM it once it has trained a while, check it saved; return the step."""
    proc = subprocess.Popen(charlm_command(*args), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert _wait_for_training(out, proc, 0, time.monotonic() + 120)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert f"charlm train --out {out} --resume" in stderr and "Traceback" not in stderr
    stopped = read_events(out)[-1]
    assert stopped["event"] == "end" and stopped["reason"] == "interrupted"
    assert assert_loadable(out) == stopped["step"] < STEPS
    return stopped["step"]


def test_sigterm_saves_and_the_resumed_run_is_bit_identical(setting, tmp_path):
    corpus, data_dir, reference = setting
    out = tmp_path / "run"
    env = child_env(data_dir)
    _stop_with_sigterm(train_args(corpus, out), out, env, tmp_path)
    resume_to_the_end(out, env, tmp_path, reference)


def test_out_of_memory_saves_the_run_and_it_resumes_exactly(setting, tmp_path):
    corpus, data_dir, reference = setting
    out = tmp_path / "run"
    failed = run(train_args(corpus, out), child_env(data_dir, CHARLM_FAULTS="oom@125"), tmp_path)
    assert failed.returncode == 1
    error = assert_user_error(failed, alone=False)
    assert "out of memory at step 125" in error
    assert "the run is saved at step 124" in error and "--resume" in error
    assert assert_loadable(out) == 124

    resume_to_the_end(out, child_env(data_dir), tmp_path, reference)


def test_a_checkpoint_the_disk_refuses_leaves_the_previous_one_and_resumes_exactly(setting, tmp_path):
    corpus, data_dir, reference = setting
    out = tmp_path / "run"
    env = child_env(data_dir)
    stopped = _stop_with_sigterm(train_args(corpus, out), out, env, tmp_path)
    state_size = (out / LAST / STATE_FILE).stat().st_size
    before = {p.name: p.read_bytes() for p in (out / LAST).iterdir()}

    full = run(resume_args(out), env, tmp_path, preexec_fn=file_size_limit(state_size // 2))
    assert full.returncode == 1
    error = assert_user_error(full, alone=False)
    # a file-size limit counts as a full disk (EFBIG), which the message says
    assert f"no space left to write the checkpoint at step {stopped + 1}" in error
    assert f"the checkpoint from step {stopped} is intact" in error and "--resume" in error
    # the previous checkpoint is byte for byte what it was, and nothing half-written is left
    assert {p.name: p.read_bytes() for p in (out / LAST).iterdir()} == before
    assert hidden_entries(out) == []

    resume_to_the_end(out, env, tmp_path, reference)


def test_the_guard_skips_a_nan_loss_and_rolls_back_nan_weights(setting, tmp_path):
    corpus, data_dir, _ = setting
    out = tmp_path / "run"
    faults = "nan-loss@40,nan-weights@160"
    done = run(train_args(corpus, out, "--checkpoint-every", "25", "--skip-limit", "3"),
               child_env(data_dir, CHARLM_FAULTS=faults), tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    log = read_events(out)
    bad = [e for e in log if e["event"] == "bad_step"]
    rollbacks = [e for e in log if e["event"] == "rollback"]
    # step 40: one NaN loss, its update skipped, training goes on
    assert bad[0]["step"] == 40 and bad[0]["loss"] == "nan" and bad[0]["action"] == "skip"
    train_40 = next(e for e in log if e["event"] == "train" and e["step"] == 42)
    assert train_40["skipped"] == 1 and train_40["loss"] is not None
    # step 160: NaN weights make every step bad; the third in a row rolls back to step 150
    assert [e["step"] for e in bad[1:]] == [160, 161, 162]
    assert [e["action"] for e in bad[1:]] == ["skip", "skip", "rollback"]
    assert len(rollbacks) == 1
    assert rollbacks[0]["step"] == 162 and rollbacks[0]["to_step"] == 150 and rollbacks[0]["lr_scale"] == 0.5
    # then it recovers: later steps are good, and the run finishes with finite weights
    assert all(e["step"] <= 162 for e in bad)
    later = [e for e in log if e["event"] == "train" and e["step"] > 165]
    assert later and all(e["loss"] is not None and e["loss"] < 3 for e in later)
    end = log[-1]
    assert end["event"] == "end" and end["step"] == STEPS and end["rollbacks"] == 1 and end["skipped_steps"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint_weights(out).values())
    assert "update skipped" in done.stderr and "rolled back from step 162" in done.stderr


def test_a_first_checkpoint_the_disk_refuses_says_to_start_again(setting, tmp_path):
    corpus, data_dir, reference = setting
    out = tmp_path / "run"
    env = child_env(data_dir)  # the corpus cache is already built by the reference run
    weights_size = (reference / LAST / WEIGHTS_FILE).stat().st_size
    full = run(train_args(corpus, out), env, tmp_path, preexec_fn=file_size_limit(weights_size // 2))
    assert full.returncode == 1
    error = assert_user_error(full, alone=False)
    assert (
        "no space left to write the checkpoint at step 0" in error and "start the run again with --overwrite" in error
    )
    assert assert_loadable(out) is None
    assert hidden_entries(out) == []

    refused = run(resume_args(out), env, tmp_path)
    assert refused.returncode == 1 and "stopped before its first checkpoint" in refused.stderr
    done = run(train_args(corpus, out, "--overwrite"), env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(out, reference)
