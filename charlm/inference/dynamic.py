"""Dynamic evaluation: score a text while a copy of the model keeps learning from it.

The tokens, lanes, windows and units are those of scoring.py's method (the same lanes from
the same positions, the same tail continuing the last lane), so static and dynamic scores
count exactly the same predictions. What differs is that after each window is scored the
working copy takes one gradient step on it and is then pulled back toward the trained
weights theta0:

    nll += NLL(window | theta)                       scored first, with the weights before it
    theta <- theta - lr * g / (rms(g) + eps)         g: gradient of the window's mean NLL
    theta <- theta + decay * (theta0 - theta)

rms(g): the running root mean square of each weight's gradient over the windows so far (the
RMS normalisation of Krause et al. 2018, estimated online from the text itself); step="sgd"
takes theta - lr * g. With several lanes one step learns from every lane's window at once,
so a token may be predicted by weights that saw later text (scored earlier, in the lanes'
order): still a fair online score; lanes=1 reads the text strictly in order and adapts best.
The model passed in is never changed; dropout is off throughout.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from charlm.errors import check
from charlm.hardware import autocast
from charlm.inference.scoring import DEFAULT_LANES, MIN_LANE_TOKENS, Score, _gather, lane_count
from charlm.models.state import detach as detach_state
from charlm.models.state import take_lanes

DYNAMIC_STEPS = ("rms", "sgd")
# measured with bench/dynamic_eval.py on tiny Shakespeare and PTB characters (BENCHMARKS.md):
# rms beat sgd on both, and no decay beat any but a tiny one
DEFAULT_DYNAMIC_STEP = "rms"
DEFAULT_DYNAMIC_LR = 1e-3
DEFAULT_DYNAMIC_DECAY = 1e-4
DEFAULT_DYNAMIC_WINDOW = 16
RMS_BETA = 0.99  # how long the running mean square of the gradient remembers (about 100 windows)
RMS_EPS = 1e-8


@dataclass(frozen=True)
class DynamicSettings:
    """How the working copy learns: step size, pull back toward the trained weights, window.

    window: tokens of each lane per adaptation step (a smaller window adapts more often and
    costs more); step: "rms" (gradient divided by its running RMS) or "sgd" (plain)."""

    lr: float = DEFAULT_DYNAMIC_LR
    decay: float = DEFAULT_DYNAMIC_DECAY
    window: int = DEFAULT_DYNAMIC_WINDOW
    step: str = DEFAULT_DYNAMIC_STEP

    def validate(self) -> "DynamicSettings":
        """Raise OptionError for a value that cannot work; returns self."""
        check(math.isfinite(self.lr) and self.lr >= 0, "dynamic_lr", f"must be a number >= 0 (got {self.lr})")
        check(0.0 <= self.decay <= 1.0, "dynamic_decay", f"must be in [0, 1] (got {self.decay})")
        check(self.window >= 1, "dynamic_window", f"must be at least 1 (got {self.window})")
        check(
            self.step in DYNAMIC_STEPS, "dynamic_step", f"must be one of {', '.join(DYNAMIC_STEPS)} (got {self.step})"
        )
        return self

    def describe(self) -> str:
        """One phrase for a report: 'lr 0.0003, decay 0.001, rms step, windows of 32'."""
        return f"lr {self.lr:g}, decay {self.decay:g}, {self.step} step, windows of {self.window}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    """One text scored twice, from one encoding: with the trained weights and adapting."""

    label: str  # what was scored: the split's name, or what the caller passed
    static: Score
    dynamic: Score
    settings: DynamicSettings
    static_seconds: float
    dynamic_seconds: float

    @property
    def gain(self) -> float:
        """How much lower the dynamic loss is, nats/token (positive: adapting helped)."""
        return self.static.loss - self.dynamic.loss


def _lane_windows(n: int, lanes: int, span: int, window: int) -> Iterator[tuple[np.ndarray, bool]]:
    """scoring.py's order of work: (B, T) target positions of every lane, window by window,
    then the tail (tail=True), which continues the last lane, as (1, T) windows."""
    starts = np.arange(lanes, dtype=np.int64)[:, None] * span  # (B, 1) first prediction of each lane
    for begin in range(0, span, window):
        yield starts + np.arange(begin, min(begin + window, span), dtype=np.int64)[None, :], False
    for begin in range(lanes * span, n, window):
        yield np.arange(begin, min(begin + window, n), dtype=np.int64)[None, :], True


class _Adapter:
    """The working copy's update rule: a step on the gradient, then the pull back to theta0."""

    def __init__(self, params: list[torch.nn.Parameter], settings: DynamicSettings):
        self.params = params
        self.settings = settings
        self.theta0 = [p.detach().clone() for p in params]
        self.mean_square = [torch.zeros_like(p) for p in params] if settings.step == "rms" else None
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        lr, decay = self.settings.lr, self.settings.decay
        self.steps += 1
        for i, (p, p0) in enumerate(zip(self.params, self.theta0)):
            if p.grad is not None:
                if self.mean_square is None:
                    p.add_(p.grad, alpha=-lr)
                else:
                    ms = self.mean_square[i].mul_(RMS_BETA).addcmul_(p.grad, p.grad, value=1 - RMS_BETA)
                    rms = (ms / (1 - RMS_BETA**self.steps)).sqrt_().add_(RMS_EPS)  # bias-corrected
                    p.addcdiv_(p.grad, rms, value=-lr)
                p.grad = None
            p.lerp_(p0, decay)  # theta + decay * (theta0 - theta)


def _working_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of the model to adapt, with dropout off. cuDNN computes an RNN's backward
    only in training mode, so on CUDA the recurrent module trains with its dropout at zero."""
    work = copy.deepcopy(model).to(device).eval()
    for module in work.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.RNNBase):
            module.dropout = 0.0
            if device.type == "cuda":
                module.train()
    for p in work.parameters():
        p.requires_grad_(True)
    return work


def score_tokens_dynamic(
    model: torch.nn.Module,
    tokens: np.ndarray,
    context_id: int,
    settings: DynamicSettings = DynamicSettings(),
    lanes: int = DEFAULT_LANES,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
    min_lane_tokens: int = MIN_LANE_TOKENS,
) -> Score:
    """Total NLL of every token of `tokens`, each window scored before a copy of the model
    learns from it (see the module docstring). The same tokens and lanes as score_tokens
    with the same arguments; with lr 0 the same total, up to float rounding."""
    settings.validate()
    n = len(tokens)
    if n == 0:
        return Score(nll=0.0, tokens=0)
    lanes = lane_count(n, lanes, min_lane_tokens)  # as score_tokens
    span = n // lanes  # at least 1: lanes <= n
    work = _working_copy(model, device)
    adapter = _Adapter([p for p in work.parameters()], settings)
    total = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    state = tail_state = None
    for targets, tail in _lane_windows(n, lanes, span, settings.window):
        if tail and tail_state is None:
            tail_state = take_lanes(state, -1, None)
        x = _gather(tokens, context_id, targets - 1).to(device, non_blocking=True)
        y = _gather(tokens, context_id, targets).to(device, non_blocking=True)
        with torch.enable_grad(), autocast(device, precision):
            logits, new_state = work(x, tail_state if tail else state)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        total += nll.detach().double()
        scored += y.numel()
        if settings.lr > 0:
            (nll / y.numel()).backward()
        adapter.step()
        if tail:
            tail_state = detach_state(new_state)
        else:
            state = detach_state(new_state)
    return Score(nll=float(total), tokens=scored, lanes=lanes, context_resets=lanes - 1)
