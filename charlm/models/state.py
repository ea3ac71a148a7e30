"""The recurrent state and its lanes: every LSTM-versus-GRU/RNN difference in one place.

A state is one tensor (L, B, H) for GRU and RNN cells, and a pair (h, c) of them for LSTM.
Each of the B columns is a lane: an independent stream (a TBPTT lane, a scoring lane, a
generated sample). The helpers here work on either form, so no caller asks which cell it
has: detach, convert to and from a list of tensors, zero where a condition holds, expand
one lane to B, take some lanes.

`LaneShare` is one process's share of the lanes under torchrun (the i-th of n contiguous
shares, in rank order): the training batches, the carried state and validation scoring all
cut the lanes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

State = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


def tensor_count(cell: str) -> int:
    """How many (L, B, H) tensors the state of `cell` holds: 2 for LSTM (h and c), else 1."""
    return 2 if cell == "lstm" else 1


def zeros(cell: str, layers: int, lanes: int, hidden: int, device: Optional[torch.device] = None) -> State:
    """The zero state of B lanes."""
    first = torch.zeros(layers, lanes, hidden, device=device)
    return from_tensors([first] + [first.clone() for _ in range(tensor_count(cell) - 1)])


def to_tensors(state: State) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def from_tensors(tensors: list[torch.Tensor]) -> State:
    """The inverse of to_tensors: two tensors make an LSTM's (h, c), one a GRU/RNN state."""
    return (tensors[0], tensors[1]) if len(tensors) == 2 else tensors[0]


def apply(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """`fn` applied to each tensor of the state."""
    return from_tensors([fn(t) for t in to_tensors(state)])


def detach(state: State) -> State:
    """Cut the graph at a window boundary; keep the values, in fp32 (autocast may leave bf16)."""
    return apply(lambda t: t.detach().float(), state)


def zero_where(condition: torch.Tensor, state: State) -> State:
    """The state with every value replaced by zero where `condition` (a scalar bool tensor)
    holds: a select on the device, no host sync."""
    return apply(lambda t: torch.where(condition, 0.0, t), state)


def expand_lanes(state: State, lanes: int) -> State:
    """A one-lane state seen as `lanes` identical lanes (a view: no copy)."""
    return apply(lambda t: t.expand(-1, lanes, -1), state)


def take_lanes(state: State, start: int, stop: Optional[int]) -> State:
    """Lanes [start, stop) of the state, as contiguous tensors (stop None: to the end)."""
    return apply(lambda t: t[:, start:stop].contiguous(), state)


def join_lanes(shares: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Lists of state tensors, one per share of the lanes in order, joined into the state
    tensors of all the lanes (L, B, H)."""
    return [torch.cat([share[i] for share in shares], dim=1) for i in range(len(shares[0]))]


@dataclass(frozen=True)
class LaneShare:
    """Share `index` of `count` contiguous shares of some lanes (a process's, under torchrun)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"share {self.index} of {self.count} does not exist")

    def bounds(self, lanes: int) -> tuple[int, int]:
        """This share [start, stop) of `lanes` lanes: as even as possible, in order."""
        return self.index * lanes // self.count, (self.index + 1) * lanes // self.count


WHOLE = LaneShare()
