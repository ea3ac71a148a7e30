"""What happens to the steps' verdicts: the log of good steps; bad steps, rollbacks, giving up; OOM.

`Recovery` owns the guard's records not yet read back (`add`) and reads them back in step
order (`read_back`): good steps feed the train event's accumulators (`take_log`), and each
bad one is met with guard.react's decision, carried out here: skip the update and go on,
roll back to the last checkpoint with a lower learning rate, or give up with a message that
names the intact checkpoint and the command that continues it with a lower --lr. Restoring
the checkpoint is the engine's (the `rollback` callable, which puts this object's
checkpointed counts back through `load`); what a rollback changes after that (lr_scale
lowered, the skip count kept) is decided here. `guarded` runs a step or a checkpoint and
turns running out of memory into a message, after `save` when the weights are consistent.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from charlm.config import TrainConfig
from charlm.errors import CharlmError, first_line
from charlm.training.checkpoint import Checkpointer, EventLog
from charlm.training.distributed import World
from charlm.training.faults import OutOfMemory
from charlm.training.guard import StepRecord, react
from charlm.training.position import RunPosition
from charlm.training.state import TrainerState, empty_log
from charlm.training.steps import StepRunner


class Recovery:
    def __init__(self, config: TrainConfig, world: World, steps: StepRunner, position: RunPosition,
                 events: EventLog, checkpoints: Checkpointer, *, rollback: Callable[[], None],
                 save: Callable[[], None]):  # fmt: skip
        """rollback(): restore the last checkpoint, keeping the elapsed time running;
        save(): checkpoint the run at its position."""
        self.config = config
        self.world = world
        self.steps = steps
        self.guard = steps.guard
        self.position = position
        self.events = events
        self.checkpoints = checkpoints
        self.rollback = rollback
        self.save = save
        # kept in the trainer state
        self.lr_scale = 1.0  # lowered by each rollback
        self.skipped_steps = 0
        self.rollbacks = 0
        self._log = empty_log()  # since the last train event
        # this session only
        self._pending: list[torch.Tensor] = []  # guard records of steps not yet read back
        self.streak = 0  # bad steps in a row, as of the last read-back
        self._last_grad_norm = 0.0
        self._rollbacks_in_a_row = 0
        self._recovering_until = 0

    def add(self, record: torch.Tensor) -> None:
        """The guard's record of the step just run (read back later)."""
        self._pending.append(record)

    @property
    def waiting(self) -> int:
        """Records not yet read back."""
        return len(self._pending)

    def read_back(self) -> bool:
        """Read the records of the steps run since the last call; count, log and react to
        bad steps in order. True when the run was rolled back."""
        records = self.guard.read(self._pending)
        self._pending = []
        first = self.position.step - len(records) + 1
        for number, record in enumerate(records, start=first):
            self._last_grad_norm = record.grad_norm
            self.streak = record.streak
            if not record.bad:
                self._log["loss_sum"] += record.loss
                self._log["good"] += 1
                if number > self._recovering_until:
                    self._rollbacks_in_a_row = 0
                continue
            self._log["skipped"] += 1
            self.skipped_steps += 1
            if self._on_bad_step(number, record):
                return True
        return False

    def take_log(self) -> tuple[Optional[float], Any, int]:
        """(mean loss of the good steps, last gradient norm, skipped steps) since the last
        train event; starts the next interval."""
        good, skipped = self._log["good"], self._log["skipped"]
        loss = self._log["loss_sum"] / good if good else None
        self._log = empty_log()
        return loss, finite_or_text(self._last_grad_norm), skipped

    # ----- bad steps ------------------------------------------------------------------------
    def _on_bad_step(self, number: int, record: StepRecord) -> bool:
        """Carry out guard.react's decision after bad step `number`; True if rolled back."""
        config = self.config
        reason = self.guard.describe(record)
        reaction = react(config.on_divergence, record.streak, config.skip_limit, self._rollbacks_in_a_row,
                         config.max_rollbacks)  # fmt: skip
        self.events.emit(
            {
                "event": "bad_step",
                "step": number,
                "reason": reason,
                "loss": finite_or_text(record.loss),
                "grad_norm": finite_or_text(record.grad_norm),
                "streak": record.streak,
                "action": reaction.action,
            }
        )
        if reaction.give_up:
            if reaction.action == "stop":
                why = f"{reason} (--on-divergence stop)"
            else:
                why = (f"{reason}, {record.streak} bad step(s) in a row after {self._rollbacks_in_a_row} "
                       f"rollback(s) (--max-rollbacks {config.max_rollbacks})")  # fmt: skip
            raise self._give_up(why, number)
        if reaction.action == "skip":
            return False
        scale, skipped = self.lr_scale, self.skipped_steps
        self.rollback()  # the checkpoint's position, log and counts: this object's `load`
        self.lr_scale = min(scale, self.lr_scale) * config.rollback_lr_factor
        self.skipped_steps = skipped  # the skips that led here still count, though their steps are redone
        self._rollbacks_in_a_row += 1
        self.rollbacks += 1
        self._recovering_until = max(self._recovering_until, number)
        self.events.emit({"event": "rollback", "step": number, "to_step": self.position.step,
                          "lr_scale": self.lr_scale, "lr": self.position.learning_rate(self.lr_scale),
                          "in_a_row": self._rollbacks_in_a_row})  # fmt: skip
        return True

    def _give_up(self, why: str, step: int) -> CharlmError:
        intact_step = self.checkpoints.last_step
        if intact_step is not None:
            lower = self.config.lr * self.lr_scale / 2
            intact = f"the checkpoint from step {intact_step} is intact: continue it with a lower --lr, e.g. "
            intact += self.events.resume_command(extra=f"--lr {lower:.3g}")
        else:
            intact = "start again with a lower --lr"
        return CharlmError(f"training diverged at step {step}: {why}; {intact} (or try --precision fp32)")

    # ----- out of memory --------------------------------------------------------------------
    def guarded(self, action: Callable[[], None]) -> None:
        """Run `action`, turning running out of memory into the message that says how to go on."""
        try:
            action()
        except Exception as exc:
            if is_out_of_memory(exc):
                raise self._out_of_memory(exc) from None
            raise

    def _out_of_memory(self, exc: BaseException) -> CharlmError:
        """Save what is consistent and explain; the caller raises the result."""
        self.steps.free_memory()
        saved = False
        # weights and optimizer untouched by the failed step; under torchrun the other
        # processes are waiting in a collective of this step, so nothing can be gathered
        if not self.steps.updating and not self.world.distributed:
            self.read_back()  # the steps completed before this one count, whatever they were
            try:
                self.save()
                saved = True
            except (CharlmError, OSError, RuntimeError):
                pass
        step, intact_step = self.position.step, self.checkpoints.last_step
        where = (
            f"the run is saved at step {step}"
            if saved
            else f"the checkpoint from step {intact_step} is intact"
            if intact_step is not None
            else "no checkpoint was written"
        )
        return CharlmError(
            f"out of memory at step {step + 1} ({first_line(exc)}); {where}. Free memory and continue with: "
            f"{self.events.resume_command()}, or start a new run with a smaller --batch-size or --hidden"
        )

    # ----- in the trainer state -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"lr_scale": self.lr_scale, "skipped_steps": self.skipped_steps, "rollbacks": self.rollbacks,
                "log": dict(self._log)}  # fmt: skip

    def load(self, state: TrainerState) -> None:
        """Back at the checkpoint `state` (its guard already loaded): no record is pending."""
        self.lr_scale, self.skipped_steps, self.rollbacks = state.lr_scale, state.skipped_steps, state.rollbacks
        self._log = dict(state.log)
        self._pending = []
        self.streak = self.guard.bad_streak


def finite_or_text(value: float):
    """JSON has no NaN or infinity: write those as text."""
    return value if math.isfinite(value) else str(value)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM error, or the CPU allocator's RuntimeError."""
    if isinstance(exc, OutOfMemory):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
