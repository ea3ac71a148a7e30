"""The training engine: one loop for every task (task.py says what a task supplies).

The engine is four parts, each owning its own state, put together here:

    RunPosition  (position.py)   step, epoch, window, clock, stop limits, progress, and the
                                 host facts every torchrun process agrees on each step
    StepRunner   (steps.py)      the optimizer, GradScaler, divergence guard and the model the
                                 step calls; one step on a batch, with no host sync
    Recovery     (recovery.py)   the guard's records read back in step order: the log, bad
                                 steps, rollbacks, giving up, out of memory
    Checkpointer (checkpoint.py) checkpoints and events in the run directory

`Engine` builds them (seed, model, per-rank seed, optimizer: in that order) and runs the
loop (`run`): each step takes the task's next batch at the schedule's learning rate, and the
guard's records are read back every `check_every` steps (and before any log line,
evaluation or checkpoint): on the CPU every step, on a GPU every `log_every` steps. It owns
what ties the parts to the run: the TrainerState (state.py) captured from all of them into
each checkpoint (every `checkpoint_every` steps or `checkpoint_seconds`, at each evaluation,
on interrupt, at step 0 of a fresh run) and loaded back into all of them at resume and at a
rollback (Recovery calls `_roll_back`, and `save` when out of memory), and validation. The
engine never prints: events go to `on_event` and metrics.jsonl; `should_stop()` is asked
once per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from charlm.config import TrainConfig
from charlm.runs.directory import RunDirectory
from charlm.training import distributed
from charlm.training.checkpoint import Checkpointer, EventLog
from charlm.training.distributed import SINGLE, World
from charlm.training.faults import FaultPlan
from charlm.training.position import RunPosition
from charlm.training.recovery import Recovery
from charlm.training.state import TrainerState
from charlm.training.steps import StepRunner
from charlm.training.task import Task


@dataclass
class TrainResult:
    step: int
    reason: str  # max_steps, max_time, epochs, interrupted
    elapsed: float
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]


def _part(part: str, name: str) -> property:
    """An attribute of one of the engine's parts, read and set through the engine."""
    return property(lambda self: getattr(getattr(self, part), name),
                    lambda self, value: setattr(getattr(self, part), name, value))  # fmt: skip


class Engine:
    """Trains `task` under `config` (a TrainConfig) into `run_dir`; see the module docstring.
    The engine reads the seed, optimisation, guard, cadence, compile and stop fields of the
    config; the rest (the data, the batches, the model's shape) is the task's."""

    # what the facade, the CLI and the tests read (and a few set) on the engine
    step, epoch, window = _part("position", "step"), _part("position", "epoch"), _part("position", "window")
    tokens_seen, elapsed = _part("position", "tokens_seen"), _part("position", "elapsed")
    max_steps, max_time = _part("position", "max_steps"), _part("position", "max_time")
    max_epochs = _part("position", "max_epochs")
    optimizer, scaler, guard = _part("steps", "optimizer"), _part("steps", "scaler"), _part("steps", "guard")
    forward_model, faults = _part("steps", "forward_model"), _part("steps", "faults")
    lr_scale, skipped_steps = _part("recovery", "lr_scale"), _part("recovery", "skipped_steps")
    rollbacks = _part("recovery", "rollbacks")

    def __init__(
        self,
        task: Task,
        config: TrainConfig,
        run_dir: RunDirectory,
        device: torch.device,
        precision: str,
        on_event: Optional[Callable[[dict[str, Any]], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        faults: Optional[FaultPlan] = None,
        world: World = SINGLE,
        check_every: Optional[int] = None,
        spent_before: float = 0.0,
    ):
        """check_every: steps between host reads of the guard's records (default: 1 on a
        single CPU process, where reading costs nothing, else log_every). spent_before: seconds
        a new run's time budget has already spent (on choosing its model); a resume's clock
        is the checkpoint's."""
        self.task, self.config, self.run_dir, self.world = task, config, run_dir, world
        self.device, self.precision = device, precision
        self.position = RunPosition(config, task.batches, world, should_stop)
        self.position.elapsed = spent_before
        if check_every is None:
            check_every = 1 if device.type == "cpu" and not world.distributed else config.log_every
        self.check_every = max(1, check_every)
        self.events = EventLog(run_dir, world, on_event or (lambda event: None))
        self.checkpoints = Checkpointer(run_dir, world, device, self.events)

        # initial weights: the same on every process (DDP checks it); dropout masks differ by rank
        torch.manual_seed(config.seed)
        self.model = task.build_model(device)
        if world.rank:
            torch.manual_seed(distributed.rank_seed(config.seed, world.rank))
        self.steps = StepRunner(self.model, task, config, device, precision, world, faults or FaultPlan())
        self.recovery = Recovery(config, world, self.steps, self.position, self.events, self.checkpoints,
                                 rollback=self._roll_back, save=self.save)  # fmt: skip

        # kept in the trainer state beyond its parts'
        self.best_val_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.metrics_size = 0  # metrics.jsonl's length at the last checkpoint
        self._last_eval_complete = True

    def close(self) -> None:
        """Let go of the DDP wrapper (see StepRunner.close)."""
        self.steps.close()

    # ----- where the run is -------------------------------------------------------------
    def epoch_progress(self) -> float:
        return self.position.epoch_progress()

    def progress(self) -> float:
        return self.position.progress()

    def stop_reason(self) -> Optional[str]:
        """Why the run stops now: a limit, an interrupt, the task's own (early stopping), or None."""
        reason = self.position.stop_reason()
        if reason is None and hasattr(self.task, "stop_reason"):
            reason = self.task.stop_reason()
        return reason

    # ----- the loop ---------------------------------------------------------------------
    def run(self) -> TrainResult:
        config, position, recovery = self.config, self.position, self.recovery
        self.model.train()
        self.events.emit(self._start_event())
        if self.checkpoints.last_step is None:
            fresh = distributed.broadcast(self.world, not self.run_dir.has_checkpoint() if self.world.is_main else None)
            if fresh:
                self.save()  # something to roll back to, and to resume after an early crash
        position.start_clock()
        last_was_eval = False
        reason = None
        while True:
            position.agree()
            reason = self.stop_reason()
            if reason:
                if recovery.read_back():
                    position.restart_timing()
                    continue  # rolled back: the steps since the checkpoint are to be done again
                break
            if position.enter_next_epoch():
                self.task.start_epoch(position.epoch)
            batch = self.task.batch(position.epoch, position.window)
            lr = position.learning_rate(recovery.lr_scale)
            self.steps.set_lr(lr, self._lr_factors())
            recovery.guarded(lambda: recovery.add(self.steps.run(position.step + 1, batch)))  # noqa: B023  (called at once)
            position.advance(self.task.batch_tokens(batch))
            last_was_eval = False

            log_due = position.step % config.log_every == 0
            eval_due = position.step % config.eval_every == 0
            save_due = position.checkpoint_owed or position.checkpoint_due()
            if not (log_due or eval_due or save_due or recovery.waiting >= self.check_every):
                continue
            if recovery.read_back():
                position.restart_timing()
                continue  # rolled back: the position and the log are the checkpoint's

            if log_due:
                self.events.emit(train_event(position, recovery, lr))
            if recovery.streak:
                # weights that just failed are not checkpointed; the next good step makes up for it
                position.checkpoint_owed |= eval_due or save_due
            elif eval_due:
                recovery.guarded(self.evaluate_and_checkpoint)
                last_was_eval = True
                position.tick()
            elif save_due:
                recovery.guarded(self.save)
                position.tick()

        if reason == "interrupted":
            self.save()
        elif not (last_was_eval and self._last_eval_complete):  # the closing one scores the whole split
            self.evaluate_and_checkpoint(complete=True)
        position.tick()
        self.events.emit({"event": "end", "step": self.step, "reason": reason, "elapsed": round(self.elapsed, 3),
                   "best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                   "skipped_steps": recovery.skipped_steps, "rollbacks": recovery.rollbacks})  # fmt: skip
        return TrainResult(self.step, reason, self.elapsed, self.best_val_loss, self.last_val_loss)

    def _lr_factors(self) -> Optional[dict[str, float]]:
        """The task's learning-rate factor of each parameter group at this point of the run."""
        factors = getattr(self.task, "lr_factors", None)
        return factors(self.position.epoch_progress()) if factors is not None else None

    def _start_event(self) -> dict[str, Any]:
        position = self.position
        return {
            "event": "start",
            "step": position.step,
            "elapsed": round(position.elapsed, 3),  # a new run's budget may be spent in part already
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "precision": self.precision,
            "threads": torch.get_num_threads(),
            "processes": self.world.size,
            "compile": self.config.compile,
            **self.task.describe(),
            "max_steps": position.max_steps,
            "max_time": position.max_time,
            "epochs": position.max_epochs,
        }

    # ----- the trainer state ------------------------------------------------------------
    def capture(self, task_state: dict[str, Any], rngs: list[dict[str, Any]], metrics_size: int) -> TrainerState:
        """The checkpoint's TrainerState, from the task's state and every process's RNGs."""
        self.metrics_size = metrics_size
        return TrainerState(
            **self.position.state(), best_val_loss=self.best_val_loss, last_val_loss=self.last_val_loss,
            **self.steps.state(), rng=rngs[0], rng_ranks=rngs if len(rngs) > 1 else None,
            world_size=self.world.size, **self.recovery.state(), metrics_size=metrics_size, task=task_state,
        )  # fmt: skip

    def trainer_state(self) -> dict[str, Any]:
        """The trainer state as a checkpoint would save it now (under torchrun, every process
        must call this together)."""
        task_state = self.task.state_dict(self.position.epoch)
        return self.capture(task_state, self.checkpoints.gather_rngs(), self.metrics_size).to_dict()

    def _restore_last_checkpoint(self, keep_elapsed: bool = False) -> TrainerState:
        """Every part back at the last checkpoint; keep_elapsed leaves the time budget running."""
        weights, saved = self.checkpoints.read_last(self.model)
        where = self.checkpoints.where
        state = TrainerState.from_dict(saved, where)
        self.steps.load(weights, state, where)
        self.position.load(state, keep_elapsed=keep_elapsed)
        self.best_val_loss, self.last_val_loss = state.best_val_loss, state.last_val_loss
        self.checkpoints.restore_rngs(state, self.config.seed)
        self.task.load_state_dict(state.task, where)
        self.recovery.load(state)
        self.metrics_size = state.metrics_size or 0
        self.checkpoints.last_step = state.step
        return state

    def _roll_back(self) -> None:
        self._restore_last_checkpoint(keep_elapsed=True)  # the time budget keeps running

    def resume(self, changed: Optional[dict[str, Any]] = None) -> None:
        """Continue from the run directory's last checkpoint: weights, optimizer, RNG, position.

        Temporary files a killed process left are removed, and metrics.jsonl is rewound to
        the checkpoint, so the resumed run logs each step exactly once. `changed` (option:
        [old, new]) is recorded in the resume event."""
        removed = self.run_dir.remove_leftovers() if self.world.is_main else []
        state = self._restore_last_checkpoint()
        self.task.check_resume(state.task, self.step)
        if changed and "lr" in changed:
            self.recovery.lr_scale = 1.0  # a new --lr replaces the rate that rollbacks lowered
        rewind = state.metrics_size is not None and self.world.is_main
        dropped = self.run_dir.rewind_metrics(state.metrics_size) if rewind else 0
        event = {"event": "resume", "step": self.step, "epoch": self.epoch, "window": self.window}
        if changed:
            event["changed"] = changed
        if dropped:
            event["discarded_events"] = dropped
        if removed:
            event["removed_leftovers"] = removed
        self.events.emit(event)

    def save(self, best: bool = False) -> None:
        """Checkpoint: best weights first (when improved), then last weights with the trainer
        state. Every process takes part; only rank 0 writes."""
        task_state = self.task.state_dict(self.position.epoch)
        rngs = self.checkpoints.gather_rngs()
        self.checkpoints.save(self.model, self.position.step, self.last_val_loss, best,
                              lambda size: self.capture(task_state, rngs, size))  # fmt: skip
        self.position.saved_now()

    # ----- validation -------------------------------------------------------------------
    def validate(self, complete: bool = True) -> Optional[float]:
        """The task's validation, logged as an eval event; returns the loss the best
        checkpoint is chosen by (a pass during training may score a sample of the split,
        and the complete pass then reports that sample's loss too, as selection_loss)."""
        started = time.perf_counter()
        figures = self.task.validate(self.model, complete=complete)
        if figures is None:
            return None
        loss = figures.get("selection_loss", figures["loss"])
        improved = self.best_val_loss is None or loss < self.best_val_loss
        self.last_val_loss = figures["loss"]
        self._last_eval_complete = figures.get("complete", True)
        if improved:
            self.best_val_loss = loss
        self.events.emit({"event": "eval", "split": "val", "step": self.step, "elapsed": round(self.elapsed, 3),
                          **figures, "best": improved, "seconds": round(time.perf_counter() - started, 3)})  # fmt: skip
        return loss

    def evaluate_and_checkpoint(self, complete: bool = False) -> None:
        previous_best = self.best_val_loss
        loss = self.validate(complete)
        improved = loss is not None and (previous_best is None or loss < previous_best)
        # without a validation split, "best" simply follows the latest weights
        self.save(best=improved or loss is None)


def train_event(position: RunPosition, recovery: Recovery, lr: float) -> dict[str, Any]:
    """The train event of the step just done: its loss, rate, gradient norm and pace."""
    loss, grad_norm, skipped = recovery.take_log()
    event = {
        "event": "train",
        "step": position.step,
        "epoch": round(position.epoch_progress(), 4),
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": position.take_throughput(),
        "elapsed": round(position.elapsed, 3),
        "progress": round(position.progress(), 5),
    }
    if skipped:
        event["skipped"] = skipped
    return event
