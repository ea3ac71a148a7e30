"""Keep sampled byte-level tokens on valid UTF-8.

Byte tokens (and SentencePiece byte-fallback pieces) can spell invalid UTF-8: a stray
continuation byte, a lead byte followed by the wrong thing, an overlong form. The
generator tracks, per sample, where it stands in the UTF-8 automaton (the 8 states
below) and forbids any token whose bytes would break it, so every sample decodes to
valid text without replacement characters.

States: 0 between characters; 1, 2, 3 expecting that many continuation bytes (80..BF);
4 after E0 (next A0..BF); 5 after ED (next 80..9F); 6 after F0 (next 90..BF);
7 after F4 (next 80..8F).
"""

from __future__ import annotations

import torch

STATES = 8
REJECT = -1


def _next_state(state: int, byte: int) -> int:
    if state == 0:
        if byte < 0x80:
            return 0
        if 0xC2 <= byte <= 0xDF:
            return 1
        if byte == 0xE0:
            return 4
        if byte == 0xED:
            return 5
        if 0xE1 <= byte <= 0xEF:
            return 2
        if byte == 0xF0:
            return 6
        if 0xF1 <= byte <= 0xF3:
            return 3
        if byte == 0xF4:
            return 7
        return REJECT
    low, high, after = {
        1: (0x80, 0xBF, 0),
        2: (0x80, 0xBF, 1),
        3: (0x80, 0xBF, 2),
        4: (0xA0, 0xBF, 1),
        5: (0x80, 0x9F, 1),
        6: (0x90, 0xBF, 2),
        7: (0x80, 0x8F, 2),
    }[state]
    return after if low <= byte <= high else REJECT


def transition_table(token_bytes: list[bytes]) -> torch.Tensor:
    """(STATES, V) int64: the state after each token from each state, or REJECT."""
    table = torch.full((STATES, len(token_bytes)), REJECT, dtype=torch.int64)
    for token, data in enumerate(token_bytes):
        for start in range(STATES):
            state = start
            for byte in data:
                state = _next_state(state, byte)
                if state == REJECT:
                    break
            table[start, token] = state
    return table


def needs_guard(token_bytes: list[bytes]) -> bool:
    """False when every token is whole characters (a char vocabulary): nothing can break."""
    return any(_ends_mid_character(data) for data in token_bytes)


def _ends_mid_character(data: bytes) -> bool:
    state = 0
    for byte in data:
        state = _next_state(state, byte)
        if state == REJECT:
            return True
    return state != 0


class Utf8Guard:
    """Per-sample UTF-8 state and the mask of tokens that would break it."""

    def __init__(self, token_bytes: list[bytes], device: torch.device):
        self.table = transition_table(token_bytes).to(device)  # (S, V)
        self.forbidden = self.table == REJECT  # (S, V)

    def initial(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, dtype=torch.int64, device=self.table.device)

    def mask(self, states: torch.Tensor) -> torch.Tensor:
        """(B,) states -> (B, V) True where a token is not allowed."""
        return self.forbidden[states]

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[states, tokens]
