"""The rules around resuming, checkpoint cadence and the divergence guard, in process.

Covers: metrics.jsonl rewound to the checkpoint (progress events after it dropped, session
markers and nothing else kept, a torn line dropped); leftovers of interrupted writes removed;
a folder left by a run killed before its first checkpoint; a changed training text refused;
changed resumable options recorded (and a new --lr replacing a rollback-lowered rate);
--checkpoint-every by steps and by time; the guard's judgement of NaN, inf and spikes and its
state surviving a resume; every RNG restored. Subprocess versions of the main guarantees are
in test_crash_resume.py.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest
import torch
from helpers import (
    assert_user_error,
    invoke,
    make_corpus,
    new_trainer,
    of_kind,
    read_events,
    resumed_trainer,
    word_text,
)

from charlm.errors import CharlmError
from charlm.runs.directory import LAST, METRICS_FILE, RunDirectory
from charlm.tasks.language_model import Trainer
from charlm.training.guard import SPIKE_WARMUP, DivergenceGuard

# ----- metrics rewind -------------------------------------------------------------------


def test_rewind_keeps_session_markers_and_drops_progress_and_torn_lines(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_metrics({"event": "start", "step": 0})
    run.append_metrics({"event": "train", "step": 1, "loss": 2.0})
    size = run.append_metrics({"event": "checkpoint", "step": 1})
    run.append_metrics({"event": "train", "step": 2, "loss": 1.9})
    run.append_metrics({"event": "eval", "step": 2, "loss": 1.8})
    run.append_metrics({"event": "end", "step": 2, "reason": "interrupted"})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"time": 1, "event": "train", "st')  # a line torn by SIGKILL
    assert run.rewind_metrics(size) == 3
    kinds = [e["event"] for e in run.read_metrics()]
    assert kinds == ["start", "train", "checkpoint", "end"]
    assert (tmp_path / METRICS_FILE).read_text().endswith("\n")
    assert run.rewind_metrics(size) == 0  # nothing more to drop


def test_a_resumed_run_logs_every_step_once(tmp_path):
    corpus = make_corpus(tmp_path, word_text(1500, seed=3))
    train = dict(log_every=1, checkpoint_every=5, eval_every=10)
    new_trainer(tmp_path / "run", corpus, train={**train, "max_steps": 10}).run()
    # what a process killed at step 13 would have left after the checkpoint of step 10
    run = RunDirectory(tmp_path / "run")
    for step in (11, 12, 13):
        run.append_metrics({"event": "train", "step": step, "loss": 9.0})
    with open(tmp_path / "run" / METRICS_FILE, "a") as f:
        f.write('{"time": 1, "event": "tr')
    events: list[dict] = []
    resumed = resumed_trainer(tmp_path / "run", corpus, events=events, max_steps=20)
    assert of_kind(events, "resume")[0]["discarded_events"] == 4
    resumed.run()
    log = read_events(tmp_path / "run")
    assert [e["step"] for e in log if e["event"] == "train"] == list(range(1, 21))
    assert [e["step"] for e in log if e["event"] == "eval"] == [10, 20]
    assert all(e["loss"] != 9.0 for e in log if e["event"] == "train")


def test_resume_removes_leftovers_of_interrupted_writes(tmp_path):
    corpus = make_corpus(tmp_path, word_text(800))
    new_trainer(tmp_path / "run", corpus, train=dict(max_steps=4)).run()
    (tmp_path / "run" / ".last.abc123").mkdir()
    (tmp_path / "run" / ".last.abc123" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "run" / ".config.json.x1y2.tmp").write_text("{")
    (tmp_path / "run" / ".user-notes").write_text("mine")  # not ours: kept
    events: list[dict] = []
    resumed_trainer(tmp_path / "run", corpus, events=events, max_steps=6)
    assert sorted(of_kind(events, "resume")[0]["removed_leftovers"]) == [".config.json.x1y2.tmp", ".last.abc123"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == [".user-notes"]


# ----- folders left by early crashes ------------------------------------------------------


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    (out / ".config.json.k3j4.tmp").write_text("{")
    run = RunDirectory(out)
    with pytest.raises(CharlmError, match="stopped before its first checkpoint.*--overwrite"):
        run.check()
    with pytest.raises(CharlmError, match="stopped before its first checkpoint.*--overwrite"):
        run.check(resume=True)
    run.prepare(overwrite=True)
    assert list(out.iterdir()) == []
    # a folder with anything else in it is still refused
    (out / "thesis.tex").write_text("x")
    with pytest.raises(CharlmError, match="not a charlm run"):
        run.check(overwrite=True)


# ----- what a resume checks and records ---------------------------------------------------


def test_resume_refuses_a_changed_training_text(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    corpus = make_corpus(tmp_path / "a", word_text(1200, seed=1))
    new_trainer(tmp_path / "run", corpus, train=dict(max_steps=3)).run()
    other = make_corpus(tmp_path / "b", word_text(1200, seed=2))  # same length and vocabulary, other text
    assert other.tokenizer.vocab_size == corpus.tokenizer.vocab_size
    with pytest.raises(CharlmError, match="training text changed since .* step 3.*restore it, or start a new run"):
        resumed_trainer(tmp_path / "run", other, max_steps=6)


def test_resume_records_changed_options_and_a_new_lr_replaces_the_lowered_one(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(word_text(3000, seed=5), encoding="utf-8")
    out = tmp_path / "run"
    base = ["--hidden", "16", "--layers", "1", "--embed", "8", "--batch-size", "4", "--seq-len", "8",
            "--threads", "1", "--sample-length", "0", "--precision", "fp32", "--log-every", "1",
            "--no-auto-size"]  # fmt: skip
    done = invoke("train", "--data", str(corpus), "--out", str(out), *base, "--max-steps", "6")
    assert done.exit_code == 0, done.output
    # a rollback had lowered the rate: a checkpoint with lr_scale 0.25
    state_path = out / LAST / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["lr_scale"] = 0.25
    torch.save(state, state_path)

    done = invoke("train", "--out", str(out), "--resume", "--max-steps", "9", "--lr", "0.001", "--checkpoint-every", "2m",
                      "--threads", "1")  # fmt: skip
    assert done.exit_code == 0, done.output
    resume = next(e for e in read_events(out) if e["event"] == "resume")
    assert resume["changed"] == {
        "max_steps": [6, 9], "lr": [0.006, 0.001], "checkpoint_every": [1000, None], "checkpoint_seconds": [600.0, 120.0],
    }  # fmt: skip
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["lr"] == 0.001 and config["checkpoint_seconds"] == 120.0 and config["checkpoint_every"] is None
    assert torch.load(state_path, weights_only=True)["lr_scale"] == 1.0
    trains = [e for e in read_events(out) if e["event"] == "train" and e["step"] > 6]
    assert trains and all(e["lr"] <= 0.001 for e in trains)
    assert "--max-steps 6 -> 9" in done.output and "--lr 0.006 -> 0.001" in done.output

    # options that decide the model or the data stay refused
    done = invoke("train", "--out", str(out), "--resume", "--hidden", "32", "--seq-len", "4")
    assert_user_error(done, "--hidden, --seq-len cannot change when resuming", status=1)


# ----- checkpoint cadence ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [("7", (7, None)), ("90s", (None, 90.0)), ("10m", (None, 600.0)), ("2h", (None, 7200.0)), ("1.5m", (None, 90.0))],
)
def test_checkpoint_every_takes_steps_or_a_time(tmp_path, value, expected):
    corpus = tmp_path / "text.txt"
    corpus.write_text(word_text(2000), encoding="utf-8")
    done = invoke("train", "--data", str(corpus), "--out", str(tmp_path / "run"), "--hidden", "8", "--layers", "1",
                      "--batch-size", "2", "--seq-len", "8", "--max-steps", "1", "--threads", "1",
                      "--sample-length", "0", "--checkpoint-every", value)  # fmt: skip
    assert done.exit_code == 0, done.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (config["checkpoint_every"], config["checkpoint_seconds"]) == expected


@pytest.mark.parametrize("value", ["0", "-3", "0s", "fast", "1d", "nans"])
def test_checkpoint_every_rejects_nonsense(tmp_path, value):
    corpus = tmp_path / "text.txt"
    corpus.write_text(word_text(2000), encoding="utf-8")
    done = invoke("train", "--data", str(corpus), "--out", str(tmp_path / "run"), "--checkpoint-every", value)
    assert_user_error(done, "--checkpoint-every", "90s, 10m or 2h", status=2)
    assert not (tmp_path / "run").exists()


def test_time_based_checkpoints(tmp_path):
    corpus = make_corpus(tmp_path, word_text(2000))
    events: list[dict] = []
    slow = lambda: time.sleep(0.02) or False  # noqa: E731  (asked once a step: about three steps per 0.05 s)
    trainer = new_trainer(tmp_path / "run", corpus, events=events, should_stop=slow,
                          train=dict(max_steps=12, checkpoint_every=None, checkpoint_seconds=0.05, eval_every=1000))  # fmt: skip
    trainer.run()
    steps = [e["step"] for e in of_kind(events, "checkpoint")]
    assert steps[0] == 0 and steps[-1] == 12
    middle = steps[1:-1]
    assert 2 <= len(middle) <= 6, steps  # by time, not at every step and not never
    assert all(b - a >= 2 for a, b in zip(steps, steps[1:-1], strict=False))


# ----- the guard ---------------------------------------------------------------------------


def _verdict(guard: DivergenceGuard, loss: float, grad_norm: float):
    """Judge one step and read it back at once: None for a good step, else the reason."""
    bad, record = guard.judge(torch.tensor(loss), torch.tensor(grad_norm))
    (read,) = guard.read([record])
    assert read.bad == bool(bad) and read.loss == pytest.approx(loss, nan_ok=True)
    return guard.describe(read) if read.bad else None


def test_guard_judges_non_finite_values_and_spikes():
    guard = DivergenceGuard(spike_factor=3.0)
    assert _verdict(guard, float("nan"), 1.0) == "the loss is nan"
    assert _verdict(guard, 2.0, float("inf")) == "the gradient norm is inf"
    assert guard.bad_streak == 2
    for _ in range(SPIKE_WARMUP - 1):
        assert _verdict(guard, 2.0, 1.0) is None
    assert guard.bad_streak == 0
    assert _verdict(guard, 7.0, 1.0) is None  # before the warm-up ends, the average is not trusted
    assert guard.average == pytest.approx(2.0 * 0.98 + 7.0 * 0.02)
    reason = _verdict(guard, 100.0, 1.0)
    assert reason is not None and reason.startswith("the loss spiked to 100")
    assert _verdict(guard, guard.average * 2.9, 1.0) is None
    # fp16: the GradScaler owns non-finite gradients; a non-finite loss is still bad
    fp16 = DivergenceGuard(spike_factor=0, check_gradient=False)
    assert _verdict(fp16, 2.0, float("inf")) is None
    assert _verdict(fp16, float("inf"), 1.0) == "the loss is inf"
    # spike_factor 0: no spike is bad
    off = DivergenceGuard(spike_factor=0)
    for _ in range(SPIKE_WARMUP):
        _verdict(off, 1.0, 1.0)
    assert _verdict(off, 1e6, 1.0) is None

    copy = DivergenceGuard(spike_factor=3.0)
    copy.load_state_dict(guard.state_dict())
    assert copy.state_dict() == guard.state_dict()


def test_guard_records_read_back_in_one_batch_match_step_by_step():
    """The trainer reads records back a batch of steps at a time on a GPU: the verdicts and
    streaks must be those of judging and reading each step at once."""
    losses = [2.0] * 12 + [float("nan"), 50.0, 2.1, float("inf"), 2.0]
    one_by_one, batched = DivergenceGuard(spike_factor=3.0), DivergenceGuard(spike_factor=3.0)
    expected = []
    for loss in losses:
        _, record = one_by_one.judge(torch.tensor(loss), torch.tensor(1.0))
        expected += one_by_one.read([record])
    records = [batched.judge(torch.tensor(loss), torch.tensor(1.0))[1] for loss in losses]
    got = batched.read(records)
    assert [(r.bad, r.streak) for r in got] == [(r.bad, r.streak) for r in expected]
    assert [r.bad for r in got].count(True) == 3 and max(r.streak for r in got) == 2
    assert batched.state_dict() == one_by_one.state_dict()


def test_every_rng_is_restored_on_resume(tmp_path):
    corpus = make_corpus(tmp_path, word_text(1000))
    trainer = new_trainer(tmp_path / "run", corpus, train=dict(max_steps=3))
    trainer.run()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    RunDirectory(tmp_path / "run").save_checkpoint(LAST, trainer.model, {"step": 3}, trainer.trainer_state())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    resumed = Trainer(
        trainer.model.config, trainer.config, corpus, RunDirectory(tmp_path / "run"), torch.device("cpu"), "fp32"
    )
    resumed.resume()
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def test_a_run_with_checkpoints_but_no_config_is_not_called_unfinished(tmp_path):
    corpus = make_corpus(tmp_path, word_text(800))
    new_trainer(tmp_path / "run", corpus, train=dict(max_steps=2)).run()
    (tmp_path / "run" / "config.json").unlink()
    run = RunDirectory(tmp_path / "run")
    for resume in (True, False):
        with pytest.raises(CharlmError, match="config.json is missing .* though the run has checkpoints; restore"):
            run.check(resume=resume)
    run.check(overwrite=True)  # replacing it is the user's explicit choice


def test_a_resume_that_fails_leaves_config_json_alone(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(word_text(3000, seed=5), encoding="utf-8")
    out = tmp_path / "run"
    done = invoke("train", "--data", str(corpus), "--out", str(out), "--hidden", "16", "--layers", "1", "--embed", "8",
                      "--batch-size", "4", "--seq-len", "8", "--threads", "1", "--sample-length", "0", "--max-steps", "3")  # fmt: skip
    assert done.exit_code == 0, done.output
    before = (out / "config.json").read_bytes()
    (out / LAST / "trainer_state.pt").write_bytes(b"not a checkpoint")
    failed = invoke("train", "--out", str(out), "--resume", "--max-steps", "9", "--threads", "1")
    assert_user_error(failed, "trainer_state.pt", status=1, alone=False)
    assert (out / "config.json").read_bytes() == before


def test_a_foreign_tokenizer_of_the_same_size_is_refused(tmp_path):
    tiny = ["--hidden", "8", "--layers", "1", "--embed", "4", "--batch-size", "2", "--seq-len", "8",
            "--threads", "1", "--sample-length", "0", "--max-steps", "2"]  # fmt: skip
    runs = {}
    for name, alphabet in (("mine", "abcdefgh \n"), ("other", "stuvwxyz \n")):
        rng = random.Random(0)
        corpus = tmp_path / f"{name}.txt"
        corpus.write_text("".join(rng.choice(alphabet) for _ in range(3000)), encoding="utf-8")
        runs[name] = tmp_path / name
        done = invoke("train", "--data", str(corpus), "--out", str(runs[name]), *tiny)
        assert done.exit_code == 0, done.output
    config = json.loads((runs["mine"] / "config.json").read_text())
    assert len(config["tokenizer_fingerprint"]) == 32
    (runs["mine"] / "tokenizer.json").write_bytes((runs["other"] / "tokenizer.json").read_bytes())
    for command in (["generate", str(runs["mine"]), "-n", "3"], ["perplexity", str(runs["mine"]), "--split", "val"]):
        result = invoke(*command)
        assert_user_error(result, "tokenizer.json is not the tokenizer this run was trained with", status=1)


def test_no_checkpoint_is_taken_of_weights_that_just_failed(tmp_path):
    from charlm.training.faults import FaultPlan

    corpus = make_corpus(tmp_path, word_text(2000))
    events: list[dict] = []
    trainer = new_trainer(tmp_path / "run", corpus, events=events,
                          train=dict(max_steps=16, checkpoint_every=7, eval_every=1000, skip_limit=5))  # fmt: skip
    # NaN weights from step 6: steps 6..10 fail and the fifth rolls back to step 0; then a
    # NaN loss at step 14 (a checkpoint step) whose checkpoint moves to step 15
    trainer.faults = FaultPlan("nan-weights@6,nan-loss@14")
    trainer.run()
    checkpoints = [e["step"] for e in of_kind(events, "checkpoint")]
    rollback = of_kind(events, "rollback")
    assert [(e["step"], e["to_step"]) for e in rollback] == [(10, 0)]
    assert checkpoints == [0, 7, 15, 16]  # not 7 while the weights were NaN; 14 moved to 15
    model, _ = RunDirectory(tmp_path / "run").load_model(LAST)
    assert all(torch.isfinite(p).all() for p in model.parameters())
