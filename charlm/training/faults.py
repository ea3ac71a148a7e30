"""Fault injection for reliability tests: make a real training run fail on purpose.

The CLI reads the plan from the environment variable CHARLM_FAULTS, a comma-separated list
of KIND@STEP, where STEP is the 1-based number of the step to disturb:

    nan-loss@12      step 12's loss becomes NaN before backward (NaN gradients follow)
    nan-weights@30   a weight matrix is filled with NaN before step 30 (every later step fails)
    oom@40           step 40 raises torch's out-of-memory error in its forward pass

Each fault fires once, even when a rollback replays its step. Nothing here runs unless a
plan is given.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import torch

from charlm.errors import CharlmError

ENV_VAR = "CHARLM_FAULTS"
KINDS = ("nan-loss", "nan-weights", "oom")

OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class FaultPlan:
    def __init__(self, spec: Optional[str] = None):
        self._pending: dict[int, set[str]] = defaultdict(set)
        for item in (spec or "").split(","):
            item = item.strip()
            if not item:
                continue
            kind, _, step = item.partition("@")
            if kind not in KINDS or not step.isdigit() or int(step) < 1:
                raise CharlmError(
                    f"{ENV_VAR}: {item!r} is not KIND@STEP with KIND one of {', '.join(KINDS)} and STEP 1 or more"
                )
            self._pending[int(step)].add(kind)

    def __bool__(self) -> bool:
        return any(self._pending.values())

    def take(self, step: int, kind: str) -> bool:
        """True once if `kind` is planned for `step`."""
        kinds = self._pending.get(step)
        if kinds and kind in kinds:
            kinds.discard(kind)
            return True
        return False

    def before_forward(self, step: int, model: torch.nn.Module) -> None:
        if self.take(step, "nan-weights"):
            with torch.no_grad():
                next(p for p in model.parameters() if p.dim() >= 2).fill_(float("nan"))
        if self.take(step, "oom"):
            raise OutOfMemory(f"injected out-of-memory fault at step {step} ({ENV_VAR})")

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        if self.take(step, "nan-loss"):
            return loss * float("nan")
        return loss
