"""Streaming negative log-likelihood of a token array under a model, in honest units.

The array is cut into lanes (see batching.py) and run window by window with the state
carried across windows, exactly as in training but without gradients. The result is the
mean NLL in nats per scored token; `bits_per_char` and `bits_per_byte` turn it into units
that compare across tokenizers, given how many characters and bytes the tokens stand for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .batching import lane_views, to_long_tensor
from .hardware import autocast
from .model import detach_state


@dataclass
class EvalResult:
    loss: float  # nats per token
    tokens: int  # tokens scored

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    def bits_per_char(self, split_tokens: int, split_chars: int) -> float:
        return self.loss * split_tokens / max(split_chars, 1) / math.log(2)

    def bits_per_byte(self, split_tokens: int, split_bytes: int) -> float:
        return self.loss * split_tokens / max(split_bytes, 1) / math.log(2)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: np.ndarray,
    batch_size: int = 16,
    seq_len: int = 256,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
) -> EvalResult:
    """Mean NLL over tokens; the first token of each lane has no context and is not scored."""
    if len(tokens) < 2:
        return EvalResult(loss=float("nan"), tokens=0)
    lanes = max(1, min(batch_size, (len(tokens) - 1) // max(seq_len, 1)))
    x_all, y_all = lane_views(tokens, lanes)
    was_training = model.training
    model.eval()
    state = None
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for start in range(0, x_all.shape[1], seq_len):
            x = to_long_tensor(x_all[:, start : start + seq_len]).to(device, non_blocking=True)
            y = to_long_tensor(y_all[:, start : start + seq_len]).to(device, non_blocking=True)
            with autocast(device, precision):
                logits, state = model(x, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            count += y.numel()
            state = detach_state(state)
    finally:
        model.train(was_training)
    return EvalResult(loss=float(total) / count, tokens=count)
