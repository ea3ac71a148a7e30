"""Scoring text under a model: total negative log-likelihood, in units that compare.

The method (used both for validation during training and by `charlm perplexity`):

  * Every token of the text is scored. The first one is predicted after a context token
    (a newline, or what the generator starts from), which is itself not scored, so a text
    of N tokens gives exactly N predictions, whatever the tokenizer.
  * The stream [context, t0, t1, ..., tN-1] is cut into B lanes (at most one per 1,000
    tokens) of S = N // B predictions;
    lane b predicts t[b*S .. b*S+S-1], reading the token before each one, so it starts
    from a zero state but with its previous token as input (a context reset: earlier text
    is not seen). The N - B*S tokens left over continue the last lane with its state. With
    B = 1 every token is conditioned on all the text before it.
  * Each lane runs in windows of T tokens with the state carried across windows, so the
    result does not depend on T (beyond float rounding).
  * A sample of the text (validation during training) is its first W windows of every lane:
    spread over the whole text, and exactly the running total a full pass has after W
    windows, which a full pass reports beside its own (Score.prefix).

Units, from the total NLL in nats over the scored text:
    loss (nats/token) = NLL / tokens          perplexity = exp(loss)
    bits/char         = NLL / (chars * ln 2)  bits/byte  = NLL / (UTF-8 bytes * ln 2)
    word perplexity   = exp(NLL / words), words = whitespace-separated runs
Figures are averaged as NLL sums, never as perplexities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from charlm.hardware import autocast
from charlm.models.state import WHOLE, LaneShare, take_lanes
from charlm.models.state import detach as detach_state

DEFAULT_LANES = 16
DEFAULT_WINDOW = 256
MIN_LANE_TOKENS = 1000


@dataclass
class Score:
    """What a text scored: sizes, the total NLL, and the units derived from them."""

    nll: float  # total negative log-likelihood, nats
    tokens: int
    chars: int = 0
    bytes: int = 0
    words: int = 0
    unknown: int = 0  # tokens scored as the unknown symbol
    lanes: int = 1
    context_resets: int = 0
    # the same pass's total after its first prefix_windows windows (see score_tokens)
    prefix: Optional["Score"] = None

    @property
    def loss(self) -> float:
        """Mean NLL in nats per token."""
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0)) if self.tokens else float("nan")

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_char(self) -> float:
        return self.nll / (self.chars * math.log(2)) if self.chars else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2)) if self.bytes else float("nan")

    @property
    def word_perplexity(self) -> float:
        return math.exp(min(self.nll / self.words, 700.0)) if self.words else float("nan")

    def to_dict(self) -> dict:
        """Plain values for JSON; a figure that is undefined (no tokens, no words) is None."""
        return {
            key: (value if not isinstance(value, float) or math.isfinite(value) else None)
            for key, value in self._fields().items()
        }

    def _fields(self) -> dict:
        return {
            "tokens": self.tokens,
            "chars": self.chars,
            "bytes": self.bytes,
            "words": self.words,
            "unknown": self.unknown,
            "nll_nats": self.nll,
            "loss_nats_per_token": self.loss,
            "perplexity": self.perplexity,
            "bits_per_char": self.bits_per_char,
            "bits_per_byte": self.bits_per_byte,
            "word_perplexity": self.word_perplexity,
            "lanes": self.lanes,
            "context_resets": self.context_resets,
        }


def _gather(tokens: np.ndarray, context_id: int, positions: np.ndarray) -> torch.Tensor:
    """tokens[positions] as int64, where position -1 is the context token."""
    out = np.asarray(tokens[np.maximum(positions, 0)], dtype=np.int64)
    out[positions < 0] = context_id
    return torch.from_numpy(out)


def lane_count(n: int, lanes: int, min_lane_tokens: int = MIN_LANE_TOKENS) -> int:
    """How many lanes a text of n tokens is cut into: at most `lanes`, and at most one per
    min_lane_tokens tokens, so a short text gets fewer (or no) context resets."""
    return max(1, min(lanes, n // max(min_lane_tokens, 1)))


@torch.no_grad()
def score_tokens(
    model: torch.nn.Module,
    tokens: np.ndarray,
    context_id: int,
    lanes: int = DEFAULT_LANES,
    window: int = DEFAULT_WINDOW,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
    min_lane_tokens: int = MIN_LANE_TOKENS,
    part: LaneShare = WHOLE,
    prefix_windows: Optional[int] = None,
    prefix_only: bool = False,
) -> Score:
    """Total NLL of every token of `tokens` (see the module docstring for the method).

    At most one lane per `min_lane_tokens` tokens, so a short text is not cut into lanes
    that each start without context.

    part, share i of n, scores only the i-th of n contiguous shares of the lanes (the last
    share also takes the tail), for n processes that each score a share: the sums of their
    `nll` and `tokens` are what one process scoring everything gets.

    prefix_windows W: also keep the running total after the first W windows of every lane
    as `score.prefix`; with prefix_only, stop there (a sample of the text, spread over all
    of it). When the lanes have no more than W windows, the prefix is the whole score."""
    n = len(tokens)
    if n == 0:
        return Score(nll=0.0, tokens=0)
    lanes = lane_count(n, lanes, min_lane_tokens)
    span = n // lanes  # predictions per lane; the remainder continues the last lane
    first, last = part.bounds(lanes)  # this part's lanes
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    starts = np.arange(first, last, dtype=np.int64)[:, None] * span  # (B, 1) first prediction of each lane
    state = None
    prefix = None
    try:
        for index, begin in enumerate(range(0, span if last > first else 0, window)):
            if prefix_windows is not None and index == prefix_windows:
                prefix = (float(total), scored)
                if prefix_only:
                    break
            offsets = np.arange(begin, min(begin + window, span), dtype=np.int64)[None, :]
            targets = starts + offsets  # (B, T) positions predicted
            x = _gather(tokens, context_id, targets - 1).to(device, non_blocking=True)
            y = _gather(tokens, context_id, targets).to(device, non_blocking=True)
            with autocast(device, precision):
                logits, state = model(x, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            scored += y.numel()
            state = detach_state(state)
        stopped = prefix_only and prefix is not None
        if lanes * span < n and last == lanes and not stopped:  # the tail continues the last lane
            last_state = None if state is None else take_lanes(state, -1, None)
            for begin in range(lanes * span, n, window):
                targets = np.arange(begin, min(begin + window, n), dtype=np.int64)[None, :]
                x = _gather(tokens, context_id, targets - 1).to(device)
                y = _gather(tokens, context_id, targets).to(device)
                with autocast(device, precision):
                    logits, last_state = model(x, last_state)
                total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
                scored += y.numel()
                last_state = detach_state(last_state)
    finally:
        model.train(was_training)
    resets = lanes - 1 if span > 0 else 0
    used_lanes = lanes if span > 0 else 1
    if prefix_only and prefix is not None:
        return Score(nll=prefix[0], tokens=prefix[1], lanes=used_lanes, context_resets=resets)
    score = Score(nll=float(total), tokens=scored, lanes=used_lanes, context_resets=resets)
    if prefix_windows is not None:
        score.prefix = score if prefix is None else Score(nll=prefix[0], tokens=prefix[1], lanes=used_lanes,
                                                          context_resets=resets)  # fmt: skip
    return score


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module,
    sequences: Sequence[np.ndarray],
    context_id: int,
    batch_size: int = 64,
    window: int = DEFAULT_WINDOW,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
) -> list[float]:
    """Total NLL of each sequence on its own, from a fresh state (padded batches, by length)."""
    results = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(order), batch_size):
            group = [i for i in order[first : first + batch_size] if len(sequences[i])]
            if not group:
                continue
            longest = max(len(sequences[i]) for i in group)
            x = torch.full((len(group), longest), context_id, dtype=torch.long)
            y = torch.full((len(group), longest), -100, dtype=torch.long)  # -100: padding, not scored
            for row, i in enumerate(group):
                seq = torch.from_numpy(np.asarray(sequences[i], dtype=np.int64))
                x[row, 1 : len(seq)] = seq[:-1]
                y[row, : len(seq)] = seq
            x, y = x.to(device), y.to(device)
            sums = torch.zeros(len(group), dtype=torch.float64, device=device)
            state = None
            for begin in range(0, longest, window):
                with autocast(device, precision):
                    logits, state = model(x[:, begin : begin + window], state)
                nll = F.cross_entropy(
                    logits.float().transpose(1, 2), y[:, begin : begin + window], reduction="none", ignore_index=-100
                )  # (B, T)
                sums += nll.double().sum(dim=1)
                state = detach_state(state)
            for row, i in enumerate(group):
                results[i] = float(sums[row])
    finally:
        model.train(was_training)
    return results
