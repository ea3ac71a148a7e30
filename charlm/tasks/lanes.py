"""Stateful truncated-BPTT batches: B contiguous lanes of the token stream, T steps at a time.

The token stream (N tokens, starting at an offset o that moves each epoch) is cut into B
lanes of S tokens each, S = (N - o - 1) // B, and viewed as a (B, S) matrix without copying:

    stream  o|<----- lane 0 ----->|<----- lane 1 ----->| ... |<---- lane B-1 ---->|+1
                                                                      (y needs one more token)

              window 0        window 1        window 2
    lane 0   [t0 .. tT-1]    [tT .. t2T-1]   [t2T ..    ]  ...
    lane 1   [s0 .. sT-1]    [sT .. s2T-1]   [s2T ..    ]  ...
      :
    lane B-1 [..        ]    [..         ]   [..        ]  ...

x for window w is columns [wT, wT+T) of that matrix and y is the same view shifted one token
to the right, so y[b, i] is the token after x[b, i]. Row b of window w+1 continues row b of
window w, which is why the hidden state of lane b is carried from one window to the next
(and detached in between: gradients stop at the window boundary, the state does not).

Each epoch draws its offset o from a generator seeded by (seed, epoch), so window boundaries
move between epochs and a resumed run gets the same batches from (epoch, window) alone.

Under torchrun each process takes a contiguous share of the B lanes (`share`, a LaneShare)
of the very same layout, so N processes together read exactly the token stream one process
would read with the same B.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.errors import CharlmError
from charlm.models.state import WHOLE, LaneShare


def lane_views(tokens: np.ndarray, lanes: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) views of shape (B, S) over tokens[offset:]; y is x shifted by one token."""
    lane_len = (len(tokens) - offset - 1) // lanes
    if lane_len < 1:
        raise CharlmError(f"{len(tokens)} tokens are too few for {lanes} lanes")
    used = lanes * lane_len
    x = tokens[offset : offset + used].reshape(lanes, lane_len)
    y = tokens[offset + 1 : offset + used + 1].reshape(lanes, lane_len)
    return x, y


def to_long_tensor(view: np.ndarray) -> torch.Tensor:
    # A uint16/uint32 memmap slice would become a tensor nn.Embedding rejects: widen per batch.
    return torch.from_numpy(np.ascontiguousarray(view, dtype=np.int64))


def minimum_tokens(batch_size: int, seq_len: int) -> int:
    return batch_size * seq_len + 1


def require_tokens(count: int, batch_size: int, seq_len: int) -> None:
    """Raise CharlmError unless a split of `count` tokens gives at least one (B, T) window."""
    need = minimum_tokens(batch_size, seq_len)
    if count < need:
        raise CharlmError(
            f"the training split has {count:,} tokens but --batch-size {batch_size} x "
            f"--seq-len {seq_len} needs at least {need:,}; lower them or give more text"
        )


class LaneBatcher:
    """Training batches for stateful TBPTT; see the module docstring for the layout."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        random_offset: bool = True,
        share: LaneShare = WHOLE,
        pin_memory: bool = False,
    ):
        """batch_size is the global B; `share` picks this process's rows of it (all of them
        by default); pin_memory puts batches in page-locked memory, for asynchronous copies
        to a GPU."""
        require_tokens(len(tokens), batch_size, seq_len)
        self.tokens = tokens
        self.batch_size = batch_size
        self.lanes = share.bounds(batch_size)  # this process's rows [start, stop)
        if self.lanes[0] >= self.lanes[1]:
            raise ValueError(f"share {share.index} of {share.count} of {batch_size} lanes is empty")
        self.pin_memory = pin_memory
        self.seq_len = seq_len
        self.seed = seed
        self.random_offset = random_offset
        self._epoch = -1
        self._x = self._y = None

    def offset(self, epoch: int) -> int:
        if not self.random_offset:
            return 0
        # keep at least one full window per lane
        high = min(self.seq_len - 1, len(self.tokens) - minimum_tokens(self.batch_size, self.seq_len))
        if high <= 0:
            return 0
        return int(np.random.default_rng([self.seed, epoch]).integers(0, high + 1))

    def _layout(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._x, self._y = lane_views(self.tokens, self.batch_size, self.offset(epoch))
            self._epoch = epoch

    def windows(self, epoch: int) -> int:
        """How many windows epoch `epoch` has (the ragged tail of each lane is dropped)."""
        self._layout(epoch)
        return self._x.shape[1] // self.seq_len

    def batch(self, epoch: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (b, T), int64, on the CPU: this process's b lanes of the B."""
        self._layout(epoch)
        start = window * self.seq_len
        end = start + self.seq_len
        if window < 0 or end > self._x.shape[1]:
            raise IndexError(f"window {window} is outside epoch {epoch}")
        first, last = self.lanes
        x, y = to_long_tensor(self._x[first:last, start:end]), to_long_tensor(self._y[first:last, start:end])
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    @property
    def tokens_per_epoch(self) -> int:
        return self.batch_size * self.seq_len * self.windows(0)
