"""The divergence guard: decides whether a training step is fit to apply.

A step is bad when its loss or its gradient norm is not finite, or when its loss jumps above
`spike_factor` times the recent average of good steps (an exponential moving average, only
trusted after `SPIKE_WARMUP` good steps). The trainer skips a bad step's update; what it
does after several bad steps in a row (roll back, give up) is the trainer's business.

Everything the guard remembers is in `state_dict()`, so a resumed run judges its steps
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
from typing import Any, Optional

# good steps before the average is trusted for spike detection
SPIKE_WARMUP = 10
# weight of the past in the moving average (about the last 50 steps)
EMA_BETA = 0.98


class DivergenceGuard:
    def __init__(self, spike_factor: float, check_gradient: bool = True):
        """spike_factor 0 turns spike detection off; non-finite values are always bad.

        check_gradient False leaves non-finite gradients to fp16's GradScaler, which skips
        those steps itself and lowers its scale."""
        self.spike_factor = spike_factor
        self.check_gradient = check_gradient
        self.average: Optional[float] = None
        self.good_steps = 0
        self.bad_streak = 0

    def judge(self, loss: float, grad_norm: float) -> Optional[str]:
        """None for a good step (and learn from it), else why it is bad (and count it)."""
        reason = self._reason(loss, grad_norm)
        if reason is None:
            self.good_steps += 1
            self.bad_streak = 0
            self.average = loss if self.average is None else EMA_BETA * self.average + (1 - EMA_BETA) * loss
        else:
            self.bad_streak += 1
        return reason

    def _reason(self, loss: float, grad_norm: float) -> Optional[str]:
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if self.check_gradient and not math.isfinite(grad_norm):
            return f"the gradient norm is {grad_norm}"
        if (
            self.spike_factor > 0
            and self.average is not None
            and self.good_steps >= SPIKE_WARMUP
            and loss > self.spike_factor * self.average
        ):
            return f"the loss spiked to {loss:.4g}, {loss / self.average:.1f}x its recent average {self.average:.4g}"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "good_steps": self.good_steps, "bad_streak": self.bad_streak}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        average = saved.get("average")
        self.average = None if average is None else float(average)
        self.good_steps = int(saved.get("good_steps", 0))
        self.bad_streak = int(saved.get("bad_streak", 0))
