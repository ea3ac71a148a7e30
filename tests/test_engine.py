"""The training engine apart from any task, and the trainer state it checkpoints.

* TrainerState: to_dict/from_dict round trip (format 4), and the formats 1, 2 and 3 that
  older run folders hold: a real checkpoint rewritten in each older layout (3 is what
  3fa6121 wrote) resumes and ends with the very weights of the format-4 resume, and from
  format 2 on with the same logged losses. Unknown formats and damaged dicts are refused
  in one line.
* The task interface: a small sequence classifier written here (no carried state,
  labelled batches, validation by accuracy) trains under the unchanged Engine, checkpoints
  its own state, and is judged by the guard like any task.
* A classifier task rolls back and resumes bit-exactly too: the engine reads a
  checkpoint's weights for whatever model the task built, not only an RNNLM.
* The engine's parts after a rollback: position, log, guard and counts are the
  checkpoint's, the learning-rate scale is lowered and the skips still count, and the
  engine's attributes (step, max_steps, lr_scale, ...) read and set its parts'.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from helpers import make_corpus, new_trainer, of_kind, resumed_trainer, same_weights, word_text

from charlm.config import TrainConfig
from charlm.errors import CharlmError
from charlm.runs.directory import LAST, STATE_FILE, RunDirectory
from charlm.training.engine import Engine
from charlm.training.faults import FaultPlan
from charlm.training.state import FORMAT, TrainerState

CPU = torch.device("cpu")


# ----- TrainerState -------------------------------------------------------------------------


def _state(**changes: Any) -> TrainerState:
    values = dict(step=7, epoch=1, window=2, tokens_seen=336, elapsed=1.5, best_val_loss=2.5, last_val_loss=2.75,
                  optimizer={"state": {}, "param_groups": []}, scaler=None, rng={"torch": torch.arange(4)},
                  guard={"average": 2.0, "good_steps": 7, "bad_streak": 0}, lr_scale=0.5, skipped_steps=1,
                  rollbacks=1, log={"loss_sum": 1.0, "good": 1, "skipped": 0}, metrics_size=1234,
                  task={"carried_state": [torch.ones(1, 4, 3)], "data": {"train_tokens": 10}})  # fmt: skip
    return TrainerState(**{**values, **changes})


def test_trainer_state_round_trips_through_a_dict():
    state = _state()
    saved = state.to_dict()
    assert saved["format"] == FORMAT == 4 and list(saved)[:4] == ["format", "step", "epoch", "window"]
    again = TrainerState.from_dict(saved)
    assert again.task["carried_state"][0] is state.task["carried_state"][0]  # no copies of tensors
    assert again == state
    assert (again.step, again.lr_scale, again.metrics_size, again.log) == (7, 0.5, 1234, state.log)


def test_unknown_and_damaged_states_are_refused_in_one_line():
    with pytest.raises(
        CharlmError, match=r"has trainer-state format 9, which this charlm cannot resume \(it reads 1, 2, 3, 4\)"
    ):
        TrainerState.from_dict({**_state().to_dict(), "format": 9}, "last/trainer_state.pt")
    damaged = _state().to_dict()
    del damaged["epoch"]
    with pytest.raises(CharlmError, match="last/trainer_state.pt does not fit this run \\(KeyError: 'epoch'\\)"):
        TrainerState.from_dict(damaged, "last/trainer_state.pt")


def _older(saved: dict[str, Any], version: int) -> dict[str, Any]:
    """A format-4 state rewritten the way charlm wrote format `version`."""
    old = {k: v for k, v in saved.items() if k != "task"}
    old.update(saved["task"])  # carried_state and data sat at the top level
    old["format"] = version
    if version <= 2:
        del old["rng_ranks"], old["world_size"]
    if version == 1:
        for key in ("guard", "lr_scale", "skipped_steps", "rollbacks", "log", "metrics_size", "data"):
            del old[key]
        rng = old.pop("rng")
        old["rng_cpu"], old["rng_cuda"] = rng["torch"], rng["cuda"]
    return old


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_formats_resume(tmp_path, version):
    corpus = make_corpus(tmp_path, word_text(3000))
    train = dict(max_steps=16, log_every=4, min_lr_ratio=1.0, warmup_steps=1)
    results = {}
    for name in ("current", "older"):
        new_trainer(tmp_path / name, corpus, train={**train, "max_steps": 8}).run()
        path = tmp_path / name / LAST / STATE_FILE
        saved = torch.load(path, weights_only=True)
        assert saved["format"] == 4 and set(saved["task"]) == {"carried_state", "data"}
        if name == "older":
            torch.save(_older(saved, version), path)
        events: list = []
        trainer = resumed_trainer(tmp_path / name, corpus, events=events, max_steps=16)
        assert (trainer.step, trainer.epoch, trainer.window) == (8, 0, 8)
        assert trainer.state is not None and trainer.state[0].shape == (1, 4, 32)  # the carried (h, c) is back
        trainer.run()
        results[name] = trainer, events
    (current, current_events), (older, older_events) = results["current"], results["older"]
    assert same_weights(current.model, older.model)  # dropout 0: the RNG and the guard do not matter here
    if version >= 2:
        train_losses = lambda events: [e["loss"] for e in of_kind(events, "train")]  # noqa: E731
        assert train_losses(older_events) == train_losses(current_events)
        assert of_kind(older_events, "resume") == of_kind(current_events, "resume")


# ----- a task that is not a language model ----------------------------------------------------


class Classifier(torch.nn.Module):
    def __init__(self, vocab: int, classes: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 8)
        self.rnn = torch.nn.GRU(8, 16, batch_first=True)
        self.head = torch.nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(x))  # (B, T, H)
        return self.head(out[:, -1])  # (B, C)


class ParityTask:
    """Label a sequence of 0/1 tokens by whether it holds more ones than zeros: labelled
    batches of fixed length, no carried state, validation by accuracy."""

    def __init__(self, seed: int = 0, batch_size: int = 16, length: int = 9, per_epoch: int = 8):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 2, (per_epoch * batch_size, length), generator=generator)
        self.y = (self.x.sum(dim=1) * 2 > length).long()
        self.val_x = torch.randint(0, 2, (64, length), generator=generator)
        self.val_y = (self.val_x.sum(dim=1) * 2 > length).long()
        self.batch_size, self.per_epoch, self.epochs_started = batch_size, per_epoch, []

    def build_model(self, device: torch.device) -> torch.nn.Module:
        return Classifier(2, 2).to(device)

    def describe(self) -> dict[str, Any]:
        return {"examples": len(self.x), "val_examples": len(self.val_x)}

    def batches(self, epoch: int) -> int:
        return self.per_epoch

    def start_epoch(self, epoch: int) -> None:
        self.epochs_started.append(epoch)

    def batch(self, epoch: int, index: int):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))  # from (seed, epoch)
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]

    def batch_tokens(self, batch) -> int:
        return batch[0].numel()

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).float(), y)

    def end_step(self, bad: torch.Tensor) -> None:
        pass

    def validate(self, model: torch.nn.Module, complete: bool = True) -> Optional[dict[str, Any]]:
        with torch.no_grad():
            logits = model(self.val_x)
        return {"loss": float(F.cross_entropy(logits, self.val_y)),
                "accuracy": float((logits.argmax(dim=1) == self.val_y).float().mean())}  # fmt: skip

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {"examples": len(self.x)}

    def load_state_dict(self, saved: dict[str, Any], where: str) -> None:
        pass

    def check_resume(self, saved: dict[str, Any], step: int) -> None:
        if saved.get("examples") != len(self.x):
            raise CharlmError("the examples changed")


def test_a_classifier_task_trains_under_the_unchanged_engine(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.prepare()
    events: list = []
    task = ParityTask()
    config = TrainConfig(batch_size=16, seq_len=9, lr=3e-2, warmup_steps=1, max_steps=160, eval_every=80,
                         log_every=20, checkpoint_every=80)  # fmt: skip
    engine = Engine(task, config, run, CPU, "fp32", on_event=events.append, faults=FaultPlan("nan-loss@30"))
    result = engine.run()
    assert result.reason == "max_steps" and result.step == 160
    assert task.epochs_started == list(range(1, 20))  # 8 batches an epoch
    start = of_kind(events, "start")[0]
    assert start["examples"] == 128 and start["parameters"] == sum(p.numel() for p in engine.model.parameters())
    evals = of_kind(events, "eval")
    assert [e["step"] for e in evals] == [80, 160] and evals[-1]["accuracy"] >= 0.85, evals
    assert [e["step"] for e in of_kind(events, "bad_step")] == [30] and engine.skipped_steps == 1
    train = of_kind(events, "train")
    assert train[-1]["loss"] < train[0]["loss"] and train[0]["tokens_per_s"] > 0
    saved = run.load_trainer_state()
    assert saved["format"] == 4 and saved["task"] == {"examples": 128} and saved["step"] == 160
    assert saved["best_val_loss"] == result.best_val_loss == min(e["loss"] for e in evals)


def test_a_rollback_puts_every_part_of_the_engine_back_at_the_checkpoint(tmp_path):
    """NaN weights before step 12 make steps 12 and 13 bad; the second (skip_limit 2) rolls
    back to the checkpoint at step 8: the position, the log and the guard are the
    checkpoint's, the learning rate is halved, the skips still count, and the run ends with
    finite weights and a trainer state that says all of it."""
    corpus = make_corpus(tmp_path, word_text(3000))
    events: list = []
    train = dict(max_steps=24, log_every=4, eval_every=1000, checkpoint_every=8, skip_limit=2)
    trainer = new_trainer(tmp_path / "run", corpus, train=train, events=events, faults=FaultPlan("nan-weights@12"))
    trainer.max_steps = 20  # the stop limits are the engine's position's, and can be set through the engine
    result = trainer.run()
    assert result.step == trainer.step == trainer.position.step == 20
    assert [(e["step"], e["action"]) for e in of_kind(events, "bad_step")] == [(12, "skip"), (13, "rollback")]
    rollback = of_kind(events, "rollback")
    assert [(e["step"], e["to_step"], e["lr_scale"], e["in_a_row"]) for e in rollback] == [(13, 8, 0.5, 1)]
    train_events = of_kind(events, "train")
    assert [e["step"] for e in train_events] == [4, 8, 12, 12, 16, 20]  # steps 9-12 done twice
    assert train_events[2]["skipped"] == 1 and "skipped" not in train_events[3]
    assert (trainer.lr_scale, trainer.skipped_steps, trainer.rollbacks) == (0.5, 2, 1)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    saved = RunDirectory(tmp_path / "run").load_trainer_state()
    assert (saved["step"], saved["lr_scale"], saved["skipped_steps"], saved["rollbacks"]) == (20, 0.5, 2, 1)
    assert saved["guard"]["bad_streak"] == 0 and trainer.trainer_state()["step"] == 20


def test_a_classifier_task_rolls_back_and_resumes_exactly_under_the_unchanged_engine(tmp_path):
    """Rollback and resume read the checkpoint's weights for whatever model the task built:
    NaN weights before step 45 roll the classifier back to its step-40 checkpoint, and a run
    interrupted after 30 steps and resumed by a new engine ends with the very weights,
    losses and trainer state of the run that never stopped."""
    config = TrainConfig(batch_size=16, seq_len=9, lr=3e-2, warmup_steps=1, max_steps=60, eval_every=20,
                         log_every=5, checkpoint_every=20, skip_limit=2)  # fmt: skip

    def engine(folder: str, events: list, **options: Any) -> Engine:
        run = RunDirectory(tmp_path / folder)
        if not run.path.exists():
            run.prepare()
        return Engine(ParityTask(), config, run, CPU, "fp32", on_event=events.append,
                      faults=FaultPlan("nan-weights@45"), **options)  # fmt: skip

    whole_events: list = []
    whole = engine("whole", whole_events)
    whole.run()
    assert [(e["step"], e["to_step"]) for e in of_kind(whole_events, "rollback")] == [(46, 40)]
    assert all(torch.isfinite(p).all() for p in whole.model.parameters())

    calls: list = []
    first_events: list = []
    first = engine("stopped", first_events, should_stop=lambda: calls.append(1) or len(calls) > 30)
    assert first.run().reason == "interrupted" and first.step == 30
    resumed_events: list = []
    resumed = engine("stopped", resumed_events)
    resumed.resume()
    assert resumed.step == 30
    resumed.run()
    assert same_weights(resumed.model, whole.model)
    losses = [(e["step"], e["loss"]) for e in of_kind(first_events + resumed_events, "train")]
    assert losses == [(e["step"], e["loss"]) for e in of_kind(whole_events, "train")]
    assert RunDirectory(tmp_path / "stopped").load_trainer_state()["rollbacks"] == 1
