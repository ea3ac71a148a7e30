"""The divergence guard: decides whether a training step is fit to apply.

A step is bad when its loss or its gradient norm is not finite, or when its loss jumps above
`spike_factor` times the recent average of good steps (an exponential moving average, only
trusted after `SPIKE_WARMUP` good steps). The engine skips a bad step's update; what comes
after a bad step (go on, roll back, give up) is `react`'s decision, a pure function of the
policy options and the counts, which the engine carries out.

The judging happens on the device the step ran on, in float64 tensors, so that a GPU never
waits for the host to read a loss: `judge` returns the verdict as a tensor (the optimizer
skips on it without a sync) and a small record of the step that the trainer reads back
later, a batch of steps at a time, to log and to react. `describe` turns a record of a bad
step into words.

Everything the guard remembers is in `state_dict()`, so a resumed run judges its steps
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import torch

# good steps before the average is trusted for spike detection
SPIKE_WARMUP = 10
# weight of the past in the moving average (about the last 50 steps)
EMA_BETA = 0.98


class StepRecord(NamedTuple):
    """One judged step, as read back on the host."""

    loss: float
    grad_norm: float
    average: float  # the moving average the step was judged against (NaN: none yet)
    bad: bool
    streak: int  # bad steps in a row, this one included (0 for a good step)


class Reaction(NamedTuple):
    """What to do after a bad step."""

    action: str  # what --on-divergence asks for at this streak: "skip", "rollback" or "stop"
    give_up: bool  # the run ends here (with its last checkpoint intact)


def react(on_divergence: str, streak: int, skip_limit: int, rollbacks_in_a_row: int, max_rollbacks: int) -> Reaction:
    """The reaction to a bad step, `streak` bad steps in a row (this one included).

    "skip" skips the update until `skip_limit` bad steps in a row, then rolls back; "stop"
    gives up at once; a rollback is refused (the run gives up) after `max_rollbacks`
    rollbacks in a row without a good step in between."""
    action = "rollback" if on_divergence == "skip" and streak >= skip_limit else on_divergence
    if action == "skip":
        return Reaction("skip", False)
    if action == "stop":
        return Reaction("stop", True)
    if action != "rollback":
        raise ValueError(f"unknown on_divergence {on_divergence!r}")
    return Reaction("rollback", rollbacks_in_a_row >= max_rollbacks)


class DivergenceGuard:
    def __init__(self, spike_factor: float, check_gradient: bool = True, device: Optional[torch.device] = None):
        """spike_factor 0 turns spike detection off; non-finite losses are always bad.

        check_gradient False leaves non-finite gradients to fp16's GradScaler, which skips
        those steps itself and lowers its scale."""
        self.spike_factor = spike_factor
        self.check_gradient = check_gradient
        self.device = device = device or torch.device("cpu")
        self._average = torch.full((), math.nan, dtype=torch.float64, device=device)  # NaN: no good step yet
        self._good_steps = torch.zeros((), dtype=torch.int64, device=device)
        self._bad_streak = torch.zeros((), dtype=torch.int64, device=device)

    def judge(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bad, record): a bool tensor, and a float64 tensor of 5 that `read` turns into a
        StepRecord. Learns from a good step; counts a bad one. Never syncs with the host."""
        loss = loss.detach().to(torch.float64)
        grad_norm = grad_norm.detach().to(torch.float64)
        bad = ~torch.isfinite(loss)
        if self.check_gradient:
            bad = bad | ~torch.isfinite(grad_norm)
        if self.spike_factor > 0:
            trusted = (self._good_steps >= SPIKE_WARMUP) & ~torch.isnan(self._average)
            bad = bad | (trusted & (loss > self.spike_factor * self._average))
        average_before = self._average.clone()
        moved = torch.where(torch.isnan(self._average), loss, EMA_BETA * self._average + (1 - EMA_BETA) * loss)
        self._average.copy_(torch.where(bad, self._average, moved))
        self._good_steps.add_((~bad).long())
        self._bad_streak.copy_(torch.where(bad, self._bad_streak + 1, 0))
        record = torch.stack([loss, grad_norm, average_before, bad.double(), self._bad_streak.double()])
        return bad, record

    @staticmethod
    def read(records: list[torch.Tensor]) -> list[StepRecord]:
        """Bring records to the host (one transfer for all of them)."""
        if not records:
            return []
        rows = torch.stack(records).cpu().tolist()
        return [StepRecord(loss, norm, average, bad > 0.5, int(streak)) for loss, norm, average, bad, streak in rows]

    def describe(self, record: StepRecord) -> str:
        """Why a bad step was bad, in words."""
        if not math.isfinite(record.loss):
            return f"the loss is {record.loss}"
        if self.check_gradient and not math.isfinite(record.grad_norm):
            return f"the gradient norm is {record.grad_norm}"
        return (
            f"the loss spiked to {record.loss:.4g}, {record.loss / record.average:.1f}x "
            f"its recent average {record.average:.4g}"
        )

    @property
    def average(self) -> Optional[float]:
        value = float(self._average)
        return None if math.isnan(value) else value

    @property
    def good_steps(self) -> int:
        return int(self._good_steps)

    @property
    def bad_streak(self) -> int:
        return int(self._bad_streak)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "good_steps": self.good_steps, "bad_streak": self.bad_streak}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        average = saved.get("average")
        self._average.fill_(math.nan if average is None else float(average))
        self._good_steps.fill_(int(saved.get("good_steps", 0)))
        self._bad_streak.fill_(int(saved.get("bad_streak", 0)))
