"""The RNNLM's training-time regularisers, each drawn once per batch so the fused kernels still run.

weight dropout   DropConnect on every layer's hidden-to-hidden matrix weight_hh_l*: one mask per
                 forward call, so all T steps see the same dropped matrix and one fused
                 nn.LSTM/GRU/RNN call still runs the whole sequence.
embed dropout    whole token types dropped: one keep/drop draw per vocabulary row per batch,
                 every occurrence of a dropped token gets a zero embedding, the rest are scaled
                 by 1 / (1 - p).
locked dropout   one mask per lane, the same at every time step: (B, 1, E) on the embeddings,
                 (B, 1, H) between layers and on the top output. Between layers this runs the
                 layers one at a time, each with the fused one-layer kernel.

The parameters stay those of the model's one recurrent module (the same state-dict keys): the
recurrent call runs through torch.func.functional_call on a parameter-free copy of that module
built on the meta device, fed the real tensors (some of them dropped). The module itself is
never touched, so eval mode (generation, scoring) runs it on the raw weights as before.
Random draws, in order: the weight masks (layer 0 first), the token mask, the embedding's
dropout mask, the masks between layers, the output's.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn
from torch.func import functional_call

from charlm.config import ModelConfig
from charlm.models import state as states
from charlm.models.state import State

_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# cuDNN copies weights that are not in one flat buffer (the dropped ones never are) and says so
_NOT_FLAT = "RNN module weights are not part of single contiguous chunk"


def recurrent_module(config: ModelConfig, input_size: int, layers: int, dropout: float, device=None) -> nn.RNNBase:
    """The nn.LSTM / nn.GRU / nn.RNN of `config.cell`, batch first."""
    options = dict(batch_first=True, dropout=dropout, device=device)
    if config.cell == "lstm":
        return nn.LSTM(input_size, config.hidden, layers, **options)
    if config.cell == "gru":
        return nn.GRU(input_size, config.hidden, layers, **options)
    nonlinearity = "relu" if config.cell == "rnn-relu" else "tanh"
    return nn.RNN(input_size, config.hidden, layers, nonlinearity=nonlinearity, **options)


def _template(config: ModelConfig, input_size: int, layers: int, dropout: float) -> nn.RNNBase:
    """A recurrent module with no storage of its own, run only through functional_call."""
    module = recurrent_module(config, input_size, layers, dropout, device="meta")
    # flatten_parameters would copy the borrowed tensors into a new flat buffer and repoint
    # them there (on CUDA), the real module's parameters included: never flatten a template
    module.flatten_parameters = _never_flatten
    return module


def _never_flatten() -> None:
    """A template's flatten_parameters (a function at module level, so a model still pickles)."""


def is_active(config: ModelConfig) -> bool:
    """Whether any regulariser changes what training computes."""
    locked = config.dropout_kind == "locked" and config.dropout > 0
    return locked or config.weight_dropout > 0 or config.embed_dropout > 0


def locked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x (B, T, D) times one mask (B, 1, D) of keep / (1 - p) shared by all T steps."""
    if p == 0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p).div_(1 - p)
    return x * mask


def token_dropout(emb: torch.Tensor, x: torch.Tensor, vocab_size: int, p: float) -> torch.Tensor:
    """emb (B, T, E) of tokens x (B, T) with whole token types dropped: the same as looking x up
    in the embedding matrix with a random p of its V rows zeroed and the rest scaled by 1 / (1 - p)."""
    keep = emb.new_empty(vocab_size).bernoulli_(1 - p).div_(1 - p)  # (V,)
    return emb * keep[x].unsqueeze(-1)


class Regularisers:
    """The regularised training forward of one RNNLM's recurrent part (not an nn.Module: it
    owns no parameters and adds no state-dict keys)."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.locked = config.dropout_kind == "locked"
        L = config.layers
        if self.locked:  # one layer at a time: the first takes E inputs, the others H
            self._first = _template(config, config.embed, 1, 0.0)
            self._rest = _template(config, config.hidden, 1, 0.0) if L > 1 else None
        else:  # one call for the whole stack, with nn.RNNBase's own dropout between layers
            self._stack = _template(config, config.embed, L, config.dropout if L > 1 else 0.0)

    def dropped_weights(self, rnn: nn.RNNBase) -> dict[str, torch.Tensor]:
        """Every layer's weight_hh_l* with one DropConnect mask drawn for this batch (layer 0 first)."""
        p = self.config.weight_dropout
        if p == 0:
            return {}
        dropped = {}
        for k in range(self.config.layers):
            weight = getattr(rnn, f"weight_hh_l{k}")  # (gH, H)
            # a mask times the weight: in trials on the CPU a third quicker than F.dropout
            dropped[f"weight_hh_l{k}"] = weight * torch.empty_like(weight).bernoulli_(1 - p).div_(1 - p)
        return dropped

    def forward(
        self, embedding: nn.Embedding, rnn: nn.RNNBase, drop: Callable, x: torch.Tensor, state: Optional[State]
    ) -> tuple[torch.Tensor, State]:
        """x (B, T) -> the top layer's output (B, T, H) after its dropout, and the new state,
        as RNNLM.forward computes them in training mode, with the regularisers on. `drop` is
        the model's standard dropout, for dropout_kind "standard"."""
        config = self.config
        weights = self.dropped_weights(rnn)
        emb = embedding(x)  # (B, T, E)
        if config.embed_dropout > 0:
            emb = token_dropout(emb, x, config.vocab_size, config.embed_dropout)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NOT_FLAT)
            if not self.locked:
                params = {name: weights.get(name, tensor) for name, tensor in rnn.named_parameters()}
                out, state = functional_call(self._stack, params, (drop(emb), state), strict=True)
                return drop(out), state
            out, state = self._layer_by_layer(rnn, weights, locked_dropout(emb, config.dropout), state)
        return locked_dropout(out, config.dropout), state

    def _layer_by_layer(
        self, rnn: nn.RNNBase, weights: dict[str, torch.Tensor], h: torch.Tensor, state: Optional[State]
    ) -> tuple[torch.Tensor, State]:
        """Each layer in turn, fused over all T steps, with a locked mask between layers; the
        carried state is cut into its layers (1, B, H) and joined back into (L, B, H)."""
        L = self.config.layers
        carried = None if state is None else states.to_tensors(state)  # each (L, B, H)
        new_layers = []
        for k in range(L):
            if k > 0:
                h = locked_dropout(h, self.config.dropout)
            params = {}
            for name in _PARAMETERS:
                key = f"{name}_l{k}"
                params[f"{name}_l0"] = weights.get(key, getattr(rnn, key))
            layer_state = None if carried is None else states.from_tensors([t[k : k + 1] for t in carried])
            template = self._first if k == 0 else self._rest
            h, layer_state = functional_call(template, params, (h, layer_state), strict=True)
            new_layers.append(states.to_tensors(layer_state))
        joined = [torch.cat([layer[i] for layer in new_layers]) for i in range(len(new_layers[0]))]
        return h, states.from_tensors(joined)
