"""One-token-at-a-time inference for RNNLM, without nn.LSTM's per-call overhead.

Calling nn.LSTM/GRU/RNN for a single time step pays a large fixed cost (oneDNN or cuDNN
set-up) that dwarfs the arithmetic at small batch sizes. Generation only ever steps one
token, so this module does the cell arithmetic directly on the model's own weights:

  * the first layer's input projection of every token, embedding @ W_ih^T + biases, is
    precomputed into a (V, G*H) table (G = 4 gates for LSTM, 3 for GRU, 1 for RNN) when
    it is small enough, so layer 0 costs one row lookup instead of a matmul;
  * each layer then needs one addmm for the recurrent term, plus elementwise gate maths;
  * the state is kept per layer, (B, H) tensors, so no slicing or stacking per step.

Gate layouts follow PyTorch's: LSTM rows are (i, f, g, o), GRU rows are (r, z, n). The
result is checked against nn.LSTM/GRU/RNN in the tests.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from charlm.models.rnnlm import RNNLM
from charlm.models.state import State, from_tensors, to_tensors

# Precompute the layer-0 input table only while it stays small.
MAX_INPUT_TABLE_BYTES = 64 << 20

LayerState = list[torch.Tensor]  # per layer: h (B, H); for LSTM also c, as [h0, c0, h1, c1, ...]


class Stepper:
    """Fast single-step inference over a trained RNNLM's weights.

    It reads the model's weight tensors in place, but the folded biases and the layer-0
    input table are computed once here: build a new Stepper after changing the weights.
    """

    def __init__(self, model: RNNLM):
        self.model = model
        config = model.config
        self.cell = config.cell
        self.layers = config.layers
        self.hidden = config.hidden
        rnn = model.rnn
        with torch.inference_mode():
            self.w_ih = [getattr(rnn, f"weight_ih_l{k}") for k in range(self.layers)]
            self.w_hh_t = [getattr(rnn, f"weight_hh_l{k}").t() for k in range(self.layers)]
            self.b_ih = [getattr(rnn, f"bias_ih_l{k}") for k in range(self.layers)]
            self.b_hh = [getattr(rnn, f"bias_hh_l{k}") for k in range(self.layers)]
            self.w_ih_t = [w.t() for w in self.w_ih]
            # GRU keeps b_hh inside r * (W_hn h + b_hn); the other cells can fold both biases in
            self.in_bias = [b if self.cell == "gru" else b + bh for b, bh in zip(self.b_ih, self.b_hh)]
            embedding = model.embedding.weight  # (V, E)
            gates = self.w_ih[0].shape[0]
            table_bytes = embedding.shape[0] * gates * embedding.element_size()
            self.input_table: Optional[torch.Tensor] = None
            if table_bytes <= MAX_INPUT_TABLE_BYTES:
                self.input_table = torch.addmm(self.in_bias[0], embedding, self.w_ih_t[0])  # (V, G*H)

    # ----- state conversion -----------------------------------------------------------
    def from_model_state(self, state: State) -> LayerState:
        """nn.LSTM-style state (L, B, H) [and c] -> per-layer list."""
        tensors = to_tensors(state)
        return [t[k].contiguous() for k in range(self.layers) for t in tensors]

    def to_model_state(self, layers: LayerState) -> State:
        n = len(layers) // self.layers  # tensors per layer: h, and c for LSTM
        return from_tensors([torch.stack(layers[i::n]) for i in range(n)])

    # ----- the step -------------------------------------------------------------------
    def _layer_input(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Input projection for layer k: x is token ids (B,) for k == 0, else (B, H)."""
        if k == 0:
            if self.input_table is not None:
                return self.input_table[x]
            return torch.addmm(self.in_bias[0], self.model.embedding.weight[x], self.w_ih_t[0])
        return torch.addmm(self.in_bias[k], x, self.w_ih_t[k])

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """tokens (B,) int64 -> logits (B, V) and the next per-layer state."""
        x: torch.Tensor = tokens
        new_state: LayerState = []
        H = self.hidden
        for k in range(self.layers):
            projected = self._layer_input(k, x)  # (B, G*H)
            if self.cell == "lstm":
                h, c = state[2 * k], state[2 * k + 1]
                gates = torch.addmm(projected, h, self.w_hh_t[k])  # (B, 4H)
                i, f, g, o = gates.split(H, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                new_state += [h, c]
            elif self.cell == "gru":
                h = state[k]
                recurrent = torch.addmm(self.b_hh[k], h, self.w_hh_t[k])  # (B, 3H)
                xr, xz, xn = projected.split(H, dim=1)
                hr, hz, hn = recurrent.split(H, dim=1)
                r = torch.sigmoid(xr + hr)
                z = torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = n + z * (h - n)  # (1 - z) * n + z * h
                new_state.append(h)
            else:
                h = state[k]
                pre = torch.addmm(projected, h, self.w_hh_t[k])
                h = torch.relu(pre) if self.cell == "rnn-relu" else torch.tanh(pre)
                new_state.append(h)
            x = h
        if self.model.projection is not None:
            x = F.linear(x, self.model.projection.weight)
        logits = F.linear(x, self.model.head.weight, self.model.head.bias)
        return logits, new_state
