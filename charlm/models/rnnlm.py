"""RNNLM: token embedding -> stacked recurrent cell -> output head.

The recurrent part is one nn.LSTM / nn.GRU / nn.RNN over all layers, so the fused
cuDNN / oneDNN kernels do the work. Dropout (one rate) is applied to the embeddings,
between recurrent layers and to the top layer's output, with fresh masks at every position
(dropout_kind "standard") or one mask per lane for the whole window ("locked"). The other
regularisers (weight dropout on weight_hh, embedding dropout of whole tokens) and locked
dropout live in charlm.models.regularisers; they act in training mode only and add no
parameters. With tied weights the head reuses the embedding matrix; when the hidden width
differs from the embedding width a bias-free projection H -> E sits in between.

The recurrent state is a tensor (L, B, H) for GRU/RNN and a pair of them (h, c) for LSTM;
charlm.models.state holds the helpers that handle either form.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from charlm.config import ModelConfig
from charlm.models import regularisers
from charlm.models import state as states
from charlm.models.state import State


class RNNLM(nn.Module):
    """Token embedding -> stacked recurrent cell -> output head (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        V, E, H, L = config.vocab_size, config.embed, config.hidden, config.layers
        # locked dropout between layers is the regularisers' (layer by layer), never the module's
        between = config.dropout if L > 1 and config.dropout_kind == "standard" else 0.0
        self.embedding = nn.Embedding(V, E)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = regularisers.recurrent_module(config, E, L, between)
        # a plain attribute, not a submodule: it owns no parameters and no state-dict keys
        self.regularisers = regularisers.Regularisers(config) if regularisers.is_active(config) else None
        self.projection = nn.Linear(H, E, bias=False) if config.tie_weights and H != E else None
        self.head = nn.Linear(E if config.tie_weights else H, V)
        if config.tie_weights:
            self.head.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # PyTorch's own initialisation, except where measured otherwise. An untied embedding
        # keeps nn.Embedding's N(0, 1): shrinking it to std 0.1 starves the first layer of
        # input and cost 0.35 nats after 300 steps in bench trials. A tied embedding is also
        # the output matrix, and N(0, 1) there would start with huge logits, so it starts
        # small. The LSTM forget-gate bias stays at PyTorch's default too: a bias of 1 was
        # 0.1 nats worse after 300 steps on tiny Shakespeare.
        if self.config.tie_weights:
            nn.init.normal_(self.embedding.weight, std=0.05)
        nn.init.zeros_(self.head.bias)

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> State:
        """Zero state for B lanes."""
        device = device or self.embedding.weight.device
        return states.zeros(self.config.cell, self.config.layers, batch_size, self.config.hidden, device)

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> tuple[torch.Tensor, State]:
        """x (B, T) int64 -> logits (B, T, V), new state. The regularisers act in training
        mode only; eval mode runs the raw weights."""
        if self.training and self.regularisers is not None:
            out, state = self.regularisers.forward(self.embedding, self.rnn, self.drop, x, state)  # (B, T, H)
        else:
            emb = self.drop(self.embedding(x))  # (B, T, E)
            out, state = self.rnn(emb, state)  # (B, T, H)
            out = self.drop(out)
        if self.projection is not None:
            out = self.projection(out)  # (B, T, E)
        return self.head(out), state

    def num_parameters(self) -> int:
        """The number of trainable numbers (a tied matrix counted once)."""
        return sum(p.numel() for p in self.parameters())


_GATES = {"lstm": 4, "gru": 3, "rnn-tanh": 1, "rnn-relu": 1}


def count_parameters(config: ModelConfig) -> int:
    """RNNLM(config).num_parameters(), worked out without building the model."""
    V, E, H, L = config.vocab_size, config.embed, config.hidden, config.layers
    g = _GATES[config.cell]
    rnn = sum(g * H * ((E if layer == 0 else H) + H) + 2 * g * H for layer in range(L))
    projection = H * E if config.tie_weights and H != E else 0
    head = (0 if config.tie_weights else H * V) + V  # a tied head reuses the embedding
    return V * E + rnn + projection + head


def training_memory_bytes(config: ModelConfig, batch_size: int, seq_len: int, half_activations: bool = False) -> int:
    """A rough lower estimate of the memory one training step takes, to refuse the hopeless.

    Parameters cost 16 bytes each in fp32 (weights, gradients and AdamW's two moments). Per
    token of a (B, T) batch, the step keeps the embedding (with its dropout), each layer's
    gates, cell and output for the backward pass (and as much again for their gradients),
    and the logits with their log-softmax and gradient. Under autocast those are half size.
    Weight dropout adds each layer's dropped weight_hh and its mask (fp32); embedding dropout
    one more (B, T, E) product; the regularisers add no parameters.
    """
    B, T = batch_size, seq_len
    V, E, H, L = config.vocab_size, config.embed, config.hidden, config.layers
    g = _GATES[config.cell]
    per_token = 3 * E + 2 * L * H * (g + 2) + 2 * H + 3 * V + (E if config.embed_dropout > 0 else 0)
    activation_bytes = 2 if half_activations else 4
    dropped_weights = 8 * L * g * H * H if config.weight_dropout > 0 else 0
    return 16 * count_parameters(config) + activation_bytes * B * T * per_token + dropped_weights
