"""SequenceClassifier: token embedding -> stacked recurrent encoder -> pooling -> one label per text.

The encoder reads one direction or two (bidirectional: the text forwards and backwards,
their outputs side by side, width D = 2H) with the fused nn.LSTM / nn.GRU / nn.RNN kernels.
A batch is padded after each text, so a forward pass gives every real position what the
text alone gives; the backward direction reads each text reversed within its length;
pooling looks at the real positions only. So a padded batch gives what each text gives
alone (packed sequences would too, at about four times the cost on the CPU). Pooling:

    last       the final state: with two directions the forward's last and the backward's first
    mean, max  over the real positions
    attention  a learned query scores every position; the softmax of the scores weighs the
               outputs (the weights can be returned, to see which characters decided)
    concat     last, max and mean side by side (3D), as ULMFiT's classifier head

then dropout and a linear layer to the C classes. A one-direction model is one module laid
out as a language model's, and reads a text in windows of `window` tokens, carrying the
state from one to the next and pooling as it goes (attention with a running softmax), so
memory is bounded by the window whatever the length. A two-direction model runs layer by
layer (each layer reads both directions of the one below) over the whole text, so its
memory grows with the text. Either way the figures are those of one pass over the whole
text. `transfer_from_lm` starts the embedding and the encoder from a language model.
"""

from __future__ import annotations

import re
from typing import Optional, Union

import torch
from torch import nn

from charlm.classifier_config import ClassifierConfig
from charlm.errors import CharlmError
from charlm.models import state as states

Logits = torch.Tensor
Explained = tuple[torch.Tensor, torch.Tensor]


def recurrent_layers(config: ClassifierConfig, input_size: int, layers: int) -> nn.RNNBase:
    """One direction's nn.LSTM / nn.GRU / nn.RNN of `layers` layers, batch first, dropout between."""
    options = dict(batch_first=True, dropout=config.dropout if layers > 1 else 0.0)
    H = config.hidden
    if config.cell == "lstm":
        return nn.LSTM(input_size, H, layers, **options)
    if config.cell == "gru":
        return nn.GRU(input_size, H, layers, **options)
    return nn.RNN(input_size, H, layers, nonlinearity="relu" if config.cell == "rnn-relu" else "tanh", **options)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) with each row's first lengths[b] positions in reverse order, the padding
    after them left in place; its own inverse."""
    B, T = x.shape[:2]
    t = torch.arange(T).unsqueeze(0)  # (1, T)
    index = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t).to(x.device)  # (B, T)
    index = index.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class Pooling:
    """Pools the encoder's outputs over a text fed window by window: sums, maxima and a
    running softmax for attention, over the real positions only (fp32)."""

    def __init__(self, kind: str, batch: int, width: int, device: torch.device, keep_scores: bool = False):
        self.kind, self.keep_scores = kind, keep_scores
        zeros = torch.zeros(batch, width, device=device)
        self.total = zeros
        self.maximum = torch.full_like(zeros, float("-inf"))
        self.weighted = zeros  # attention: sum of exp(score - top) * output
        self.norm = torch.zeros(batch, device=device)  # attention: sum of exp(score - top)
        self.top = torch.full((batch,), float("-inf"), device=device)
        self.scores: list[torch.Tensor] = []

    def add(self, out: torch.Tensor, mask: torch.Tensor, scores: Optional[torch.Tensor] = None) -> None:
        """out (B, W, D) outputs of one window, mask (B, W) true at real positions,
        scores (B, W) the attention's scores of those positions (attention only)."""
        out = out.float()
        if self.kind in ("mean", "concat"):
            self.total = self.total + (out * mask.unsqueeze(-1)).sum(1)
        if self.kind in ("max", "concat"):
            self.maximum = torch.maximum(self.maximum, out.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1))
        if self.kind == "attention":
            scores = scores.float().masked_fill(~mask, float("-inf"))
            top = torch.maximum(self.top, scores.amax(1))  # finite once a row has had a real position
            safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            rescale = torch.exp(self.top - safe)  # exp(-inf) = 0 before the first real position
            weights = torch.exp(scores - safe.unsqueeze(1))  # (B, W), 0 at padding
            self.norm = self.norm * rescale + weights.sum(1)
            self.weighted = self.weighted * rescale.unsqueeze(1) + (weights.unsqueeze(-1) * out).sum(1)
            self.top = top
            if self.keep_scores:
                self.scores.append(scores)

    def result(self, last: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The pooled (B, D) or, for concat, (B, 3D) vector; last (B, D) the final states."""
        last = last.float()
        if self.kind == "last":
            return last
        mean = self.total / lengths.to(self.total.device, torch.float32).unsqueeze(1)
        if self.kind == "mean":
            return mean
        if self.kind == "max":
            return self.maximum
        if self.kind == "attention":
            return self.weighted / self.norm.unsqueeze(1)
        return torch.cat([last, self.maximum, mean], dim=1)

    def attention_weights(self, length: int) -> torch.Tensor:
        """(B, T) the softmax weights over every position (0 at padding), T = length: the
        windows stop at the longest text, so padding beyond it has no scores of its own."""
        scores = torch.cat(self.scores, dim=1)
        scores = torch.nn.functional.pad(scores, (0, length - scores.shape[1]), value=float("-inf"))
        return torch.softmax(scores, dim=1)


class SequenceClassifier(nn.Module):
    """Embedding -> recurrent encoder -> pooling -> dropout -> linear (see the module docstring)."""

    window = 256  # tokens one recurrent call reads, one-direction models (results do not depend on it)

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        config.validate()
        self.config = config
        E, H, L = config.embed, config.hidden, config.layers
        width = H * config.directions  # D
        self.embedding = nn.Embedding(config.vocab_size, config.embed)
        self.drop = nn.Dropout(config.dropout)
        if config.bidirectional:  # layer by layer: each layer reads both directions of the one below
            self.forward_layers = nn.ModuleList(recurrent_layers(config, E if i == 0 else 2 * H, 1) for i in range(L))
            self.backward_layers = nn.ModuleList(recurrent_layers(config, E if i == 0 else 2 * H, 1) for i in range(L))
        else:  # one module, laid out as a language model's (transfer copies it as it is)
            self.rnn = recurrent_layers(config, E, L)
        self.attention = nn.Linear(width, 1, bias=False) if config.pooling == "attention" else None
        self.head = nn.Linear(3 * width if config.pooling == "concat" else width, config.classes)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, explain: bool = False) -> Union[Logits, Explained]:
        """x (B, T) int64 token ids, padded with anything; lengths (B,) int64, each at least 1.
        Returns logits (B, C); with explain (attention pooling), also the (B, T) weights."""
        if x.dim() != 2 or lengths.shape != (x.shape[0],):
            raise CharlmError(f"classifier input must be (B, T) ids with B lengths (got {tuple(x.shape)})")
        lengths = lengths.cpu().to(torch.int64)
        if bool((lengths < 1).any()) or int(lengths.max()) > x.shape[1]:
            raise CharlmError("every text must have from 1 to T tokens")
        keep_scores = explain and self.attention is not None
        width = self.config.hidden * self.config.directions
        pool = Pooling(self.config.pooling, x.shape[0], width, x.device, keep_scores)
        if self.config.bidirectional:
            last = self._read_both_ways(x, lengths, pool)
        else:
            last = self._read_in_windows(x, lengths, pool)
        logits = self.head(self.drop(pool.result(last, lengths)))
        return (logits, pool.attention_weights(x.shape[1])) if keep_scores else logits

    def _positions(self, lengths: torch.Tensor, start: int, width: int, device: torch.device) -> torch.Tensor:
        """(B, width) true where position start + i is inside the text."""
        return (torch.arange(start, start + width).unsqueeze(0) < lengths.unsqueeze(1)).to(device)

    def _feed(self, pool: Pooling, out: torch.Tensor, mask: torch.Tensor) -> None:
        scores = self.attention(out).squeeze(-1) if self.attention is not None else None
        pool.add(out, mask, scores)

    # Padding sits after each text, so a forward pass over the padded batch (the fused
    # kernel; packed sequences take a path about four times slower on the CPU) gives every
    # real position exactly what the text alone gives; the outputs at the padding are
    # masked out of the pooling, and a text's last state is its output at its last position.

    def _read_both_ways(self, x: torch.Tensor, lengths: torch.Tensor, pool: Pooling) -> torch.Tensor:
        """Both directions, layer by layer over the whole text; returns the last states (B, 2H).
        The backward direction reads each text reversed within its length."""
        B, T = x.shape
        inputs = self.drop(self.embedding(x))  # (B, T, E)
        for number, (forward, backward) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if number:
                inputs = self.drop(inputs)
            ahead, _ = forward(inputs)  # (B, T, H)
            behind, _ = backward(reverse_within(inputs, lengths))
            inputs = torch.cat([ahead, reverse_within(behind, lengths)], dim=2)  # (B, T, 2H)
        self._feed(pool, inputs, self._positions(lengths, 0, T, x.device))
        rows = torch.arange(B, device=x.device)
        ends = (lengths - 1).to(x.device)
        # forward's state after the last token, backward's after the first (its last step)
        return torch.cat([ahead[rows, ends], behind[rows, ends]], dim=1)

    def _read_in_windows(self, x: torch.Tensor, lengths: torch.Tensor, pool: Pooling) -> torch.Tensor:
        """One direction, window by window with the state of the texts not yet done carried;
        returns the last states (B, H)."""
        B, T = x.shape
        last = None
        state = None  # of the rows in `rows`
        rows = torch.arange(B)
        for start in range(0, T, self.window):
            width = min(self.window, T - start)
            going = lengths[rows] > start
            if not bool(going.all()):  # texts that ended in the window before leave the batch
                rows = rows[going]
                keep = torch.nonzero(going).squeeze(1).to(x.device)
                state = states.apply(lambda t: t.index_select(1, keep), state)  # noqa: B023
            if len(rows) == 0:
                break
            here = rows.to(x.device)
            out, state = self.rnn(self.drop(self.embedding(x[here, start : start + width])), state)  # (b, W, H)
            full = out.new_zeros(B, width, out.shape[2]).index_copy(0, here, out)
            self._feed(pool, full, self._positions(lengths, start, width, x.device))
            ends = lengths[rows] - 1 - start  # where each text ends, if in this window
            done = (ends < width).nonzero().squeeze(1)
            if len(done):
                found = out[done.to(x.device), ends[done].to(x.device)].float()  # (d, H)
                if last is None:
                    last = torch.zeros(B, out.shape[2], device=x.device)
                last = last.index_copy(0, rows[done].to(x.device), found)
        return last

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


_LM_RECURRENT = re.compile(r"^rnn\.(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)$")


def transfer_from_lm(model: SequenceClassifier, lm_weights: dict[str, torch.Tensor]) -> list[str]:
    """Copy a language model's embedding and recurrent weights into `model`; returns the
    names of the parameters that came from it.

    The shapes must agree (the classifier takes the language model's vocabulary, cell,
    layers, hidden and embedding widths). With two directions, the forward direction is the
    language model's; above the first layer its input is twice as wide (both directions of
    the layer below), and the columns reading the backward half start at zero, so the
    forward direction computes at first exactly the language model's features. The
    backward direction keeps its fresh initialisation: a model trained to read forwards
    knows nothing of reading backwards."""
    own = model.state_dict()
    layers = {int(found.group(2)) for found in map(_LM_RECURRENT.match, lm_weights) if found}
    if len(layers) != model.config.layers:
        raise CharlmError(
            f"the language model has {len(layers)} recurrent layers but the classifier {model.config.layers}; "
            "the classifier must take the language model's shape"
        )
    taken = []
    with torch.no_grad():
        for name, value in lm_weights.items():
            target_name = name
            match = _LM_RECURRENT.match(name)
            if model.config.bidirectional and match:
                target_name = f"forward_layers.{match.group(2)}.{match.group(1)}_l0"
            if not (name == "embedding.weight" or match) or target_name not in own:
                continue
            target = own[target_name]
            if target.shape == value.shape:
                target.copy_(value)
            elif match and match.group(1) == "weight_ih" and target.shape[1] == 2 * value.shape[1]:
                target.zero_()
                target[:, : value.shape[1]].copy_(value)
            else:
                raise CharlmError(
                    f"the language model's {name} is {tuple(value.shape)} but the classifier needs "
                    f"{tuple(target.shape)}; the classifier must take the language model's shape"
                )
            taken.append(target_name)
    return taken
