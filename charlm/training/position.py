"""Where a run is: its position, its clock, its stop limits, and how far through its budget it is.

`RunPosition` owns the step, epoch, window (batches done in this epoch), tokens seen and
elapsed seconds, and answers from them alone: when to stop (max_steps, max_time, epochs,
an interrupt), the fraction of the budget used (`progress`, which drives the learning-rate
schedule), and whether a checkpoint is due. It keeps the run's clock (`tick`) and the
throughput since the last train event. Under torchrun the host facts behind those answers
(an interrupt, rank 0's clock, the time since the last checkpoint) are agreed by every
process each step (`agree`), so all of them decide alike. The engine (engine.py) moves it
on after each step and reloads it from a checkpoint; recovery.py reads it to number steps.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from charlm.config import TrainConfig
from charlm.training import distributed
from charlm.training.distributed import World
from charlm.training.optim import learning_rate
from charlm.training.state import TrainerState


class RunPosition:
    def __init__(self, config: TrainConfig, batches: Callable[[int], int], world: World,
                 should_stop: Optional[Callable[[], bool]]):  # fmt: skip
        """batches(epoch): how many steps that epoch has (the task's)."""
        self.config = config
        self.batches = batches
        self.world = world
        self.should_stop = should_stop or (lambda: False)
        self.max_steps, self.max_time, self.max_epochs = config.stop_limits()
        self.step = 0
        self.epoch = 0
        self.window = 0  # batches done in this epoch
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.checkpoint_owed = False  # a checkpoint was due while the weights had just failed
        self._last_save_clock = time.monotonic()
        self._interrupted = False  # agreed by every process
        self._since_save = 0.0  # seconds since the last checkpoint, agreed by every process
        self._clock = time.perf_counter()
        self._timing = [0.0, 0]  # since the last train event, in this session: seconds, tokens

    # ----- where the run is -------------------------------------------------------------
    def epoch_progress(self) -> float:
        return self.epoch + self.window / max(self.batches(self.epoch), 1)

    def progress(self) -> float:
        """The fraction of the budget used: steps, seconds or epochs, whichever is furthest."""
        fractions = [0.0]
        if self.max_steps:
            fractions.append(self.step / self.max_steps)
        if self.max_time:
            fractions.append(self.elapsed / self.max_time)
        if self.max_epochs:
            fractions.append(self.epoch_progress() / self.max_epochs)
        return min(max(fractions), 1.0)

    def learning_rate(self, scale: float) -> float:
        """The schedule's rate for the next step, times `scale`."""
        return learning_rate(self.config, self.step, self.progress()) * scale

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

    def agree(self) -> None:
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

    def checkpoint_due(self) -> bool:
        steps, seconds = self.config.checkpoint_every, self.config.checkpoint_seconds
        return (steps is not None and self.step % steps == 0) or (seconds is not None and self._since_save >= seconds)

    def saved_now(self) -> None:
        """A checkpoint was just taken."""
        self._last_save_clock = time.monotonic()
        self.checkpoint_owed = False

    # ----- moving on --------------------------------------------------------------------
    def enter_next_epoch(self) -> bool:
        """Move to the next epoch when this one has no batch left; True if it did."""
        if self.window < self.batches(self.epoch):
            return False
        self.epoch += 1
        self.window = 0
        return True

    def advance(self, tokens: int) -> None:
        """One step done, on `tokens` tokens."""
        self.step += 1
        self.window += 1
        self.tokens_seen += tokens
        self._timing[0] += self.tick()
        self._timing[1] += tokens

    # ----- the clock --------------------------------------------------------------------
    def start_clock(self) -> None:
        """The session's first step starts now."""
        self._timing = [0.0, 0]
        self._clock = time.perf_counter()

    def tick(self) -> float:
        """Add the seconds since the last tick to the elapsed time; returns them."""
        now = time.perf_counter()
        spent, self._clock = now - self._clock, now
        self.elapsed += spent
        return spent

    def restart_timing(self) -> None:
        """Back at a checkpoint: the steps timed since the last train event are to be redone."""
        self._timing = [0.0, 0]
        self.tick()

    def take_throughput(self) -> float:
        """Tokens per second since the last train event (steps timed in this session only:
        a resumed run's first interval began before it); starts the next interval."""
        seconds, tokens = self._timing
        self._timing = [0.0, 0]
        return round(tokens / max(seconds, 1e-9), 1)

    # ----- in the trainer state ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "window": self.window, "tokens_seen": self.tokens_seen,
                "elapsed": self.elapsed}  # fmt: skip

    def load(self, state: TrainerState, keep_elapsed: bool = False) -> None:
        """Back at the checkpoint `state`; keep_elapsed leaves the time budget running."""
        self.step, self.epoch, self.window, self.tokens_seen = state.step, state.epoch, state.window, state.tokens_seen
        if not keep_elapsed:
            self.elapsed = state.elapsed
        self.checkpoint_owed = False
