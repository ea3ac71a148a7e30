"""Loop control: the position in the run, its stop limits and progress, and the loop itself.

`Loop` is the engine's half that decides when things happen: which batch comes next (epoch,
window), when to log, evaluate and checkpoint, when to stop (max_steps, max_time, epochs,
an interrupt), and how far the run is through its budget (`progress`, which drives the
learning-rate schedule). Under torchrun the host facts behind those decisions (an
interrupt, the clock, the time since the last checkpoint) are agreed every step, so every
process decides alike. What goes wrong in a step is Recovery's (recovery.py), built on this
class; the steps themselves, checkpoints and validation are the Engine's (engine.py), built
on that: one engine, in three classes of one concern each.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from charlm.config import TrainConfig
from charlm.training import distributed
from charlm.training.distributed import World
from charlm.training.optim import learning_rate
from charlm.training.state import empty_log


@dataclass
class TrainResult:
    step: int
    reason: str  # max_steps, max_time, epochs, interrupted
    elapsed: float
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]


class Loop:
    def __init__(self, config: TrainConfig, should_stop: Optional[Callable[[], bool]], world: World):
        self.config = config
        self.world = world
        self.should_stop = should_stop or (lambda: False)
        self.max_steps, self.max_time, self.max_epochs = config.stop_limits()
        self.step = 0
        self.epoch = 0
        self.window = 0  # batches done in this epoch
        self.tokens_seen = 0
        self.elapsed = 0.0
        self._checkpoint_owed = False
        self._last_save_clock = time.monotonic()
        self._interrupted = False  # agreed by every process
        self._since_save = 0.0  # seconds since the last checkpoint, agreed by every process

    # ----- where the run is -------------------------------------------------------------
    def epoch_progress(self) -> float:
        return self.epoch + self.window / max(self.task.batches(self.epoch), 1)

    def progress(self) -> float:
        fractions = [0.0]
        if self.max_steps:
            fractions.append(self.step / self.max_steps)
        if self.max_time:
            fractions.append(self.elapsed / self.max_time)
        if self.max_epochs:
            fractions.append(self.epoch_progress() / self.max_epochs)
        return min(max(fractions), 1.0)

    def stop_reason(self) -> Optional[str]:
        if self.max_steps is not None and self.step >= self.max_steps:
            return "max_steps"
        if self.max_time is not None and self.elapsed >= self.max_time:
            return "max_time"
        if self.max_epochs is not None and self.epoch_progress() >= self.max_epochs - 1e-9:
            return "epochs"
        if self._interrupted:
            return "interrupted"
        return None

    def _agree_on_clock(self) -> None:
        """Take this step's host-side facts: an interrupt, the elapsed time, the time since
        the last checkpoint. Under torchrun every process takes rank 0's clock and stops if
        any process was interrupted, so all of them decide alike."""
        interrupted = float(self.should_stop())
        since_save = time.monotonic() - self._last_save_clock
        if not self.world.distributed:
            self._interrupted, self._since_save = bool(interrupted), since_save
            return
        main = self.world.is_main
        stop, elapsed, since_save = distributed.agree(
            self.world, [interrupted, self.elapsed if main else 0.0, since_save if main else 0.0]
        )
        self._interrupted, self.elapsed, self._since_save = stop > 0, elapsed, since_save

    def _checkpoint_due(self) -> bool:
        steps, seconds = self.config.checkpoint_every, self.config.checkpoint_seconds
        return (steps is not None and self.step % steps == 0) or (seconds is not None and self._since_save >= seconds)

    def saved_now(self) -> None:
        """A checkpoint was just taken."""
        self._last_save_clock = time.monotonic()
        self._checkpoint_owed = False

    # ----- the loop ---------------------------------------------------------------------
    def _start_event(self) -> dict[str, Any]:
        return {
            "event": "start",
            "step": self.step,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "precision": self.precision,
            "threads": torch.get_num_threads(),
            "processes": self.world.size,
            "compile": self.config.compile,
            **self.task.describe(),
            "max_steps": self.max_steps,
            "max_time": self.max_time,
            "epochs": self.max_epochs,
        }

    def run(self) -> TrainResult:
        config = self.config
        self.model.train()
        self.emit(self._start_event())
        if self.last_checkpoint_step is None:
            fresh = distributed.broadcast(self.world, not self.run_dir.has_checkpoint() if self.world.is_main else None)
            if fresh:
                self.save()  # something to roll back to, and to resume after an early crash
        self._timing = [0.0, 0]  # since the last train event, in this session: seconds, tokens
        clock = time.perf_counter()
        last_was_eval = False

        def tick() -> float:
            nonlocal clock
            now = time.perf_counter()
            spent, clock = now - clock, now
            self.elapsed += spent
            return spent

        reason = None
        while True:
            self._agree_on_clock()
            reason = self.stop_reason()
            if reason:
                if self._pending and self._read_back():
                    self._timing = [0.0, 0]
                    tick()
                    continue  # rolled back: the steps since the checkpoint are to be done again
                break
            if self.window >= self.task.batches(self.epoch):
                self.epoch += 1
                self.window = 0
                self.task.start_epoch(self.epoch)
            batch = self.task.batch(self.epoch, self.window)
            lr = learning_rate(config, self.step, self.progress()) * self.lr_scale
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            self.guarded(lambda: self._train_step(batch))  # noqa: B023  (called at once)
            tokens = self.task.batch_tokens(batch)
            self.step += 1
            self.window += 1
            self.tokens_seen += tokens
            self._timing[0] += tick()
            self._timing[1] += tokens
            last_was_eval = False

            log_due = self.step % config.log_every == 0
            eval_due = self.step % config.eval_every == 0
            save_due = self._checkpoint_owed or self._checkpoint_due()
            if not (log_due or eval_due or save_due or len(self._pending) >= self.check_every):
                continue
            if self._read_back():
                self._timing = [0.0, 0]
                tick()
                continue  # rolled back: the position and the log are the checkpoint's

            if log_due:
                self._log_train(lr)
            if self._streak:
                # weights that just failed are not checkpointed; the next good step makes up for it
                self._checkpoint_owed |= eval_due or save_due
            elif eval_due:
                self.guarded(self.evaluate_and_checkpoint)
                last_was_eval = True
                tick()
            elif save_due:
                self.guarded(self.save)
                tick()

        if reason == "interrupted":
            self.save()
        elif not last_was_eval:
            self.evaluate_and_checkpoint()
        tick()
        self.emit({"event": "end", "step": self.step, "reason": reason, "elapsed": round(self.elapsed, 3),
                   "best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                   "skipped_steps": self.skipped_steps, "rollbacks": self.rollbacks})  # fmt: skip
        return TrainResult(self.step, reason, self.elapsed, self.best_val_loss, self.last_val_loss)

    def _log_train(self, lr: float) -> None:
        seconds, tokens = self._timing
        good, skipped = self._log["good"], self._log["skipped"]
        event = {
            "event": "train",
            "step": self.step,
            "epoch": round(self.epoch_progress(), 4),
            "loss": self._log["loss_sum"] / good if good else None,
            "lr": lr,
            "grad_norm": finite_or_text(self._last_grad_norm),
            # steps timed in this session only: a resumed run's first interval began before it
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "elapsed": round(self.elapsed, 3),
            "progress": round(self.progress(), 5),
        }
        if skipped:
            event["skipped"] = skipped
        self.emit(event)
        self._log = empty_log()
        self._timing = [0.0, 0]


def finite_or_text(value: float):
    """JSON has no NaN or infinity: write those as text."""
    return value if math.isfinite(value) else str(value)
