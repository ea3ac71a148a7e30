"""The throughput probe: how many training tokens per second a candidate model gets here.

It trains each candidate it is asked about for a moment, on real windows of the training
split, with the optimizer, precision, threads, device, lanes and window length the run will
use: one warm-up step (allocations, kernel choice), then timed steps until the candidate's
share of time has passed. (Shorter windows looked cheaper to time, but under bf16 on a CPU
their cost per token is half again higher, so they mislead.) Each answer is kept, so the sizing rule can ask again for free. The clock is a
parameter, so a test can make any candidate as fast or slow as it likes.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from charlm.config import ModelShape, TrainConfig
from charlm.hardware import autocast
from charlm.models.rnnlm import RNNLM
from charlm.training.optim import build_optimizer

SECONDS_PER_CANDIDATE = 0.6
MIN_TIMED_STEPS = 2
PROBE_WINDOW = 128


class ThroughputProbe:
    """probe(shape, B) -> training tokens/s of that model with B lanes (0 if it cannot run).

    `fits(shape, B)` may refuse a candidate before it is built (memory); `seconds` is the
    time the probe has taken, by its clock, and `measured` what it found, by "LxH/B"."""

    def __init__(
        self,
        tokens: np.ndarray,
        vocab_size: int,
        train: TrainConfig,
        device: torch.device,
        precision: str,
        clock: Callable[[], float] = time.perf_counter,
        seconds_per_candidate: float = SECONDS_PER_CANDIDATE,
        fits: Optional[Callable[[ModelShape, int], bool]] = None,
    ):
        self.tokens, self.vocab_size, self.train = tokens, vocab_size, train
        self.device, self.precision, self.clock = device, precision, clock
        self.seconds_per_candidate = seconds_per_candidate
        self.fits = fits or (lambda shape, batch: True)
        self.window = max(1, min(PROBE_WINDOW, train.seq_len, (len(tokens) - 1) // 2))
        self.seconds = 0.0
        self.measured: dict[str, float] = {}
        self.current: Optional[tuple[ModelShape, int]] = None  # what is being timed (a fake clock may ask)

    @staticmethod
    def key(shape: ModelShape, batch_size: int) -> str:
        return f"{shape.layers}x{shape.hidden}/{batch_size}"

    def __call__(self, shape: ModelShape, batch_size: int) -> float:
        key = self.key(shape, batch_size)
        if key not in self.measured:
            started = self.clock()
            self.measured[key] = self._measure(shape, batch_size) if self.fits(shape, batch_size) else 0.0
            self.seconds += self.clock() - started
        return self.measured[key]

    def _measure(self, shape: ModelShape, batch_size: int) -> float:
        self.current = (shape, batch_size)
        rng_state = torch.random.get_rng_state()  # the run's initial weights must not depend on the probe
        try:
            model = RNNLM(shape.with_vocabulary(self.vocab_size)).to(self.device)
            model.train()
            optimizer = build_optimizer(model, self.train)
            batches = self._batches(batch_size)
            self._step(model, optimizer, next(batches))  # warm-up: not timed
            self._sync()
            steps, started = 0, self.clock()
            while True:
                self._step(model, optimizer, next(batches))
                steps += 1
                self._sync()
                spent = self.clock() - started
                if steps >= MIN_TIMED_STEPS and spent >= self.seconds_per_candidate:
                    break
            return steps * batch_size * self.window / max(spent, 1e-9)
        finally:
            torch.random.set_rng_state(rng_state)
            self.current = None

    def _batches(self, batch_size: int):
        """Endless (x, y) windows of B lanes from the training split, wrapping around."""
        T, n = self.window, len(self.tokens)
        starts = (np.arange(batch_size, dtype=np.int64) * max(1, (n - T - 1) // batch_size)) % max(1, n - T - 1)
        offset = 0
        while True:
            positions = (starts[:, None] + offset + np.arange(T + 1)[None, :]) % n  # (B, T + 1)
            chunk = torch.from_numpy(np.asarray(self.tokens[positions], dtype=np.int64)).to(self.device)
            yield chunk[:, :-1], chunk[:, 1:]
            offset += T

    def _step(self, model: RNNLM, optimizer: torch.optim.Optimizer, batch) -> None:
        x, y = batch
        with autocast(self.device, self.precision):
            logits, _ = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.train.grad_clip)
        optimizer.step()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
