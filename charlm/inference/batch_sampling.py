"""Sampling a batch whose rows each have their own settings and their own random stream.

The server advances many requests in one step; each has its temperature, top-k, top-p or
greedy choice, and its seed. A row's token must not depend on which other rows share the
batch, so nothing here mixes rows: every row is filtered on its own sorted distribution and
drawn by the inverse of its cumulative sum at a uniform number from its own numpy
generator. The filters mean what sampling.py's do: top-k first, then top-p over what is
left, the most likely token always kept; temperature 0 (or greedy) takes the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class RowSettings:
    """One row's way of choosing: temperature 0 or greedy means the argmax."""

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    greedy: bool = False

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


class BatchSettings:
    """The settings of B rows as tensors, built once per change of the batch's members."""

    def __init__(self, rows: Sequence[RowSettings], vocab: int, device: torch.device):
        self.greedy = torch.tensor([r.is_greedy for r in rows], dtype=torch.bool, device=device)
        self.any_sampled = not bool(self.greedy.all())
        self.temperature = torch.tensor(
            [[1.0 if r.is_greedy else r.temperature] for r in rows], dtype=torch.float32, device=device
        )  # (B, 1)
        self.top_k = torch.tensor([[min(r.top_k or vocab, vocab)] for r in rows], device=device)  # (B, 1)
        self.top_p = torch.tensor([[1.0 if r.top_p is None else r.top_p] for r in rows], device=device)  # (B, 1)
        self.needs_top_p = bool((self.top_p < 1.0).any())


def sample_rows(logits: torch.Tensor, settings: BatchSettings, uniforms: np.ndarray) -> torch.Tensor:
    """logits (B, V), forbidden tokens already -inf; uniforms (B,) in [0, 1) -> ids (B,)."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    if not settings.any_sampled:
        return greedy
    V = logits.shape[-1]
    scaled = (logits - logits.max(dim=-1, keepdim=True).values) / settings.temperature
    values, order = torch.sort(scaled, dim=-1, descending=True, stable=True)  # (B, V)
    rank = torch.arange(V, device=logits.device)
    values = values.masked_fill(rank >= settings.top_k, float("-inf"))
    probs = values.softmax(dim=-1)
    if settings.needs_top_p:
        before = probs.cumsum(dim=-1) - probs  # the mass of the tokens ranked above each one
        probs = probs.masked_fill((before >= settings.top_p) & (rank > 0), 0.0)
    cumulative = probs.cumsum(dim=-1)  # (B, V)
    u = torch.as_tensor(uniforms, dtype=torch.float32, device=logits.device).unsqueeze(1) * cumulative[:, -1:]
    index = (cumulative <= u).sum(dim=-1, keepdim=True).clamp_(max=V - 1)  # first position past u
    # a position whose probability is 0 (filtered, or forbidden) can only be reached by rounding
    index = torch.minimum(index, (probs > 0).sum(dim=-1, keepdim=True) - 1)
    drawn = order.gather(1, index).squeeze(1)
    return torch.where(settings.greedy, greedy, drawn)
