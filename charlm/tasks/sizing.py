"""The model for the budget: the shape, batch and learning rate a run gets when the user fixes none.

The rule works in training tokens. A run limited by steps or epochs knows how many tokens it
will see; one limited by time (the default five minutes) multiplies the seconds it has by the
tokens/s of each candidate, which a short probe measures on this machine at the run's
precision (probe.py). It picks the widest candidate (HIDDENS, at the user's layers and cell)
that still sees at least TOKENS_PER_PARAMETER training tokens per recurrent parameter: a
smaller model reads more text per minute, a larger one learns more from each token, and the
sweeps in BENCHMARKS.md (issue 14) put the balance near that figure. Then the batch: the most
lanes (at most 32 on a CPU, 256 on a GPU) that still leave MIN_STEPS optimizer steps, the
learning rate scaled by sqrt(B / 32), warm-up at most 5% of the steps. A large vocabulary
ties the output layer to a wider embedding, which makes its cost per token a fraction, and
dropout is locked (one mask per lane for the window), which is cheaper than fresh masks.
Every option the user gives is kept as given; the rule decides only the rest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from charlm.config import ModelShape, TrainConfig

HIDDENS = (128, 192, 256, 320, 384, 512, 640, 768, 1024)
TOKENS_PER_PARAMETER = 3.0
MIN_STEPS = 1500
BATCHES = (8, 16, 32, 64, 128, 256)
MAX_CPU_BATCH = 32
REFERENCE_BATCH, REFERENCE_LR, MAX_LR = 32, 6e-3, 1e-2
MAX_WARMUP, MIN_WARMUP = 100, 10
LARGE_VOCABULARY, LARGE_VOCABULARY_EMBED = 1000, 128
# what the rule may decide: model fields, then training fields
SHAPE_DECISIONS = ("hidden", "embed", "tie_weights", "dropout_kind")
# locked (variational) dropout: about 10% faster than standard on a CPU and no worse (BENCHMARKS.md)
CHOSEN_DROPOUT_KIND = "locked"
TRAIN_DECISIONS = ("batch_size", "lr", "warmup_steps")

Throughput = Callable[[ModelShape, int], float]  # tokens/s of (shape, lanes); 0 when it cannot run


@dataclass
class Limits:
    """What stops the run, in the terms the rule needs."""

    steps: Optional[int]
    seconds: Optional[float]  # the time left for training steps
    epochs: Optional[float]
    train_tokens: int  # tokens in one epoch of the training split
    seq_len: int

    @classmethod
    def of(cls, train: TrainConfig, train_tokens: int, seconds_spent: float = 0.0) -> "Limits":
        steps, seconds, epochs = train.stop_limits()
        if seconds is not None:
            seconds = max(seconds - seconds_spent, 0.0)
        return cls(steps, seconds, epochs, train_tokens, train.seq_len)

    def tokens(self, shape: ModelShape, batch_size: int, throughput: Optional[Throughput]) -> float:
        """Training tokens a run of this shape and batch sees before a limit stops it."""
        bounds = []
        if self.steps is not None:
            bounds.append(self.steps * batch_size * self.seq_len)
        if self.epochs is not None:
            bounds.append(self.epochs * self.train_tokens)
        if self.seconds is not None and throughput is not None:
            bounds.append(self.seconds * throughput(shape, batch_size))
        return min(bounds) if bounds else math.inf

    def steps_limited(self, tokens: float, batch_size: int) -> bool:
        """Whether the step limit is what stops the run (then fewer lanes only mean fewer tokens)."""
        return self.steps is not None and tokens >= self.steps * batch_size * self.seq_len


@dataclass
class SizeChoice:
    """What the rule chose and why; kept in config.json (extra.budget) so a resume never re-decides."""

    shape: ModelShape
    batch_size: int
    lr: float
    warmup_steps: int
    tokens: float  # expected training tokens
    steps: float  # expected optimizer steps
    tokens_per_parameter: float
    reason: str
    decided: list[str] = field(default_factory=list)  # the options the rule set
    measured: dict[str, float] = field(default_factory=dict)  # "LxH/B": tokens/s, from the probe
    probe_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        names = ("cell", "layers", "hidden", "embed", "tie_weights", "dropout_kind")
        chosen = {name: getattr(self.shape, name) for name in names}
        chosen.update(batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps)
        return {
            "rule": "tokens-per-parameter",
            "tokens_per_parameter_target": TOKENS_PER_PARAMETER,
            "min_steps": MIN_STEPS,
            "chosen": chosen,
            "decided": self.decided,
            "expected_tokens": round(self.tokens) if math.isfinite(self.tokens) else None,
            "expected_steps": round(self.steps) if math.isfinite(self.steps) else None,
            "tokens_per_parameter": round(self.tokens_per_parameter, 2),
            "reason": self.reason,
            "measured_tokens_per_s": {key: round(value, 1) for key, value in self.measured.items()},
            "probe_seconds": round(self.probe_seconds, 3),
        }


def recurrent_parameters(shape: ModelShape) -> int:
    """Weights and biases of the recurrent layers: what the tokens-per-parameter rule counts
    (the embedding and output layer grow with the vocabulary, not with what the model learns)."""
    gates = {"lstm": 4, "gru": 3}.get(shape.cell, 1)
    H, E = shape.hidden, shape.embed
    return sum(gates * H * ((E if layer == 0 else H) + H + 2) for layer in range(shape.layers))


def choose_size(
    shape: ModelShape,
    train: TrainConfig,
    given: set[str],
    limits: Limits,
    vocab_size: int,
    throughput: Optional[Throughput],
    on_gpu: bool = False,
    lane_ok: Callable[[int], bool] = lambda batch: True,
) -> SizeChoice:
    """The rule (see the module docstring). `given` names the options the user set: those keep
    shape's and train's values. throughput(shape, B) is only asked when time limits the run."""
    decided = [name for name in SHAPE_DECISIONS + TRAIN_DECISIONS if name not in given]
    base = dataclasses.replace(shape)
    if "dropout_kind" not in given:
        base.dropout_kind = CHOSEN_DROPOUT_KIND
    if vocab_size > LARGE_VOCABULARY:
        # the output layer's H x V matrix would cost more per token than the recurrence:
        # tie it to a (wider) embedding, whose E x V cost is a fraction of it
        if "tie_weights" not in given:
            base.tie_weights = True
        if "embed" not in given and base.tie_weights:
            base.embed = max(base.embed, LARGE_VOCABULARY_EMBED)
    batch = train.batch_size if "batch_size" in given else REFERENCE_BATCH

    widths = [shape.hidden] if "hidden" in given else list(HIDDENS)
    candidates = [dataclasses.replace(base, hidden=h) for h in widths]

    def enough(candidate: ModelShape) -> bool:
        return limits.tokens(candidate, batch, throughput) >= TOKENS_PER_PARAMETER * recurrent_parameters(candidate)

    # tokens per parameter only falls as the width grows: a binary search asks the probe about
    # few widths; when none sees enough, the narrowest (and a width given is the only candidate)
    best, low, high = 0, 0, len(candidates) - 1
    while low <= high and len(candidates) > 1:
        middle = (low + high) // 2
        if enough(candidates[middle]):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    chosen = candidates[best]

    if "batch_size" not in given:
        batch = _choose_batch(chosen, limits, throughput, MAX_CPU_BATCH if not on_gpu else BATCHES[-1], lane_ok)
    tokens = limits.tokens(chosen, batch, throughput)
    steps = tokens / (batch * limits.seq_len)
    lr = train.lr if "lr" in given else min(MAX_LR, REFERENCE_LR * math.sqrt(batch / REFERENCE_BATCH))
    warmup = train.warmup_steps
    if "warmup_steps" not in given:
        warmup = MAX_WARMUP if not math.isfinite(steps) else int(min(MAX_WARMUP, max(MIN_WARMUP, steps // 20)))
    per_parameter = tokens / recurrent_parameters(chosen)
    reason = _reason(chosen, batch, tokens, steps, per_parameter, limits, "hidden" in given)
    return SizeChoice(chosen, batch, lr, warmup, tokens, steps, per_parameter, reason, decided)


def _choose_batch(
    shape: ModelShape, limits: Limits, throughput: Optional[Throughput], most: int, lane_ok: Callable[[int], bool]
) -> int:
    """The most lanes (up to `most`) that still leave MIN_STEPS optimizer steps; the fewest else."""
    options = [b for b in BATCHES if b <= most and lane_ok(b)] or [REFERENCE_BATCH]
    for batch in reversed(options):
        tokens = limits.tokens(shape, batch, throughput)
        if limits.steps_limited(tokens, batch) and batch <= REFERENCE_BATCH:
            return batch  # a step limit: fewer lanes would not add steps, only take tokens away
        if tokens / (batch * limits.seq_len) >= MIN_STEPS:
            return batch
    return options[0]


def _reason(shape: ModelShape, batch: int, tokens: float, steps: float, per_parameter: float, limits: Limits,
            width_given: bool) -> str:  # fmt: skip
    if not math.isfinite(tokens):
        return "no limit bounds the run's tokens"
    what = "the width given" if width_given else f"the widest that sees at least {TOKENS_PER_PARAMETER:g} tokens per"
    what += " recurrent parameter" if not width_given else ""
    if not width_given and shape.hidden == HIDDENS[0] and per_parameter < TOKENS_PER_PARAMETER:
        what = "the narrowest candidate (none sees enough tokens)"
    limit = "seconds" if limits.seconds is not None else "steps" if limits.steps is not None else "epochs"
    return (
        f"{what}: about {tokens / 1e6:.1f}M tokens in {steps:,.0f} steps of {batch} lanes "
        f"({per_parameter:.1f} per recurrent parameter), bounded by {limit}"
    )
