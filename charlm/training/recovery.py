"""What the engine does when a step goes wrong: bad steps, rollbacks, giving up, out of memory.

The guard's records of the steps are read back in order (`_read_back`): good steps feed the
log accumulators, and each bad one is met with guard.react's decision, carried out here:
skip the update and go on, roll back to the last checkpoint with a lower learning rate, or
give up with a message that names the intact checkpoint and the command that continues it
with a lower --lr. Running out of memory saves the run when its weights are consistent and
says how to continue. Built on Loop (loop.py); the Engine (engine.py) is built on this.
"""

from __future__ import annotations

from typing import Callable

import torch

from charlm.errors import CharlmError, first_line
from charlm.training.faults import OutOfMemory
from charlm.training.guard import StepRecord, react
from charlm.training.loop import Loop, finite_or_text
from charlm.training.optim import learning_rate


class Recovery(Loop):
    def _read_back(self) -> bool:
        """Read the records of the steps run since the last call; count, log and react to
        bad steps in order. True when the run was rolled back."""
        records = self.guard.read(self._pending)
        self._pending = []
        first = self.step - len(records) + 1
        for number, record in enumerate(records, start=first):
            self._last_grad_norm = record.grad_norm
            self._streak = record.streak
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

    # ----- divergence and out of memory ---------------------------------------------------
    def _on_bad_step(self, number: int, record: StepRecord) -> bool:
        """Carry out guard.react's decision after bad step `number`; True if rolled back."""
        config = self.config
        reason = self.guard.describe(record)
        reaction = react(config.on_divergence, record.streak, config.skip_limit, self._rollbacks_in_a_row,
                         config.max_rollbacks)  # fmt: skip
        self.emit(
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
        failed_at, scale, skipped = number, self.lr_scale, self.skipped_steps
        self._restore_last_checkpoint(keep_elapsed=True)  # the time budget keeps running
        self.lr_scale = min(scale, self.lr_scale) * config.rollback_lr_factor
        self.skipped_steps = skipped  # the skips that led here still count, though their steps are redone
        self._rollbacks_in_a_row += 1
        self.rollbacks += 1
        self._recovering_until = max(self._recovering_until, failed_at)
        self._checkpoint_owed = False  # back at a checkpoint
        self.emit({"event": "rollback", "step": failed_at, "to_step": self.step, "lr_scale": self.lr_scale,
                   "lr": learning_rate(config, self.step, self.progress()) * self.lr_scale,
                   "in_a_row": self._rollbacks_in_a_row})  # fmt: skip
        return True

    def _give_up(self, why: str, step: int) -> CharlmError:
        if self.last_checkpoint_step is not None:
            lower = self.config.lr * self.lr_scale / 2
            intact = (
                f"the checkpoint from step {self.last_checkpoint_step} is intact: continue it with a lower --lr, e.g. "
            )
            intact += self.events.resume_command(extra=f"--lr {lower:.3g}")
        else:
            intact = "start again with a lower --lr"
        return CharlmError(f"training diverged at step {step}: {why}; {intact} (or try --precision fp32)")

    def _out_of_memory(self, exc: BaseException) -> CharlmError:
        """Save what is consistent and explain; the caller raises the result."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        saved = False
        if self._pending and not self.world.distributed and not self._updating:
            self._read_back()  # the steps completed before this one count, whatever they were
        # weights and optimizer untouched by the failed step; under torchrun the other
        # processes are waiting in a collective of this step, so nothing can be gathered
        if not self._updating and not self.world.distributed:
            try:
                self.save()
                saved = True
            except (CharlmError, OSError, RuntimeError):
                pass
        where = (
            f"the run is saved at step {self.step}"
            if saved
            else f"the checkpoint from step {self.last_checkpoint_step} is intact"
            if self.last_checkpoint_step is not None
            else "no checkpoint was written"
        )
        return CharlmError(
            f"out of memory at step {self.step + 1} ({first_line(exc)}); {where}. Free memory and continue with: "
            f"{self.events.resume_command()}, or start a new run with a smaller --batch-size or --hidden"
        )

    def guarded(self, action: Callable[[], None]) -> None:
        """Run `action`, turning running out of memory into the message that says how to go on."""
        try:
            action()
        except Exception as exc:
            if is_out_of_memory(exc):
                raise self._out_of_memory(exc) from None
            raise


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM error, or the CPU allocator's RuntimeError."""
    if isinstance(exc, OutOfMemory):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
