"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus)."""

from __future__ import annotations

from typing import Optional

import torch

from charlm.config import SampleConfig


def next_token(logits: torch.Tensor, config: SampleConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,). temperature 0 is greedy; top-k and top-p filter first."""
    logits = logits.float()
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    # subtract the maximum first: a tiny temperature then tends to greedy instead of overflowing
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
