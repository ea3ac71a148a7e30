"""What a language model makes of a text, token by token: surprise and unit activations.

    token_logprobs(model, ids, context_id)          # (T,) log-probability of each token
    inspect_units(model, ids, context_id, layer=0)  # the same, and one layer's state after each token

Both read the text as one stream from a fresh state, the first token predicted after the
context token, as scoring does (scoring.py). token_logprobs runs the fused kernel window by
window; inspect_units steps the cells one token at a time (stepper.py), because nn.LSTM
gives neither the inner layers' states nor the cell state at every position, and keeps only
the chosen layer's state. These feed the server's /v1/score and /v1/inspect, and the
playground's surprise and activation views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from charlm.errors import check
from charlm.inference.stepper import Stepper
from charlm.models.rnnlm import RNNLM

WINDOW = 1024  # tokens per forward pass, so a long text never holds (T, V) logits at once


@torch.inference_mode()
def token_logprobs(model: RNNLM, ids: np.ndarray, context_id: int, window: int = WINDOW) -> np.ndarray:
    """(T,) float64: log p(ids[t] | context, ids[:t]) in nats."""
    device = next(model.parameters()).device
    stream = torch.as_tensor(np.concatenate([[context_id], np.asarray(ids, dtype=np.int64)]), device=device)
    out = np.zeros(len(ids), dtype=np.float64)
    state = None
    for begin in range(0, len(ids), window):
        inputs = stream[begin : begin + window].unsqueeze(0)  # (1, T)
        targets = stream[begin + 1 : begin + 1 + window]
        logits, state = model(inputs, state)
        logp = torch.log_softmax(logits[0].float(), dim=-1)  # (T, V)
        out[begin : begin + len(targets)] = logp.gather(1, targets.unsqueeze(1)).squeeze(1).double().cpu().numpy()
    return out


def state_names(cell: str) -> list[str]:
    """The states inspect_units can show for a cell: an LSTM has a cell state besides h."""
    return ["hidden", "cell"] if cell == "lstm" else ["hidden"]


@dataclass(frozen=True)
class UnitTrace:
    """One layer's state after each token of a text, with each token's log-probability."""

    logprobs: np.ndarray  # (T,) nats
    activations: np.ndarray  # (T, H) the chosen state of the chosen layer after reading token t

    def ranking(self, top: int) -> dict[str, list[tuple[int, float]]]:
        """The units that are most active (mean |value|) and that change most (standard
        deviation) over the text, `top` of each, strongest first."""
        scores = {"active": np.abs(self.activations).mean(axis=0), "changing": self.activations.std(axis=0)}
        return {
            name: [(int(unit), float(values[unit])) for unit in np.argsort(-values, kind="stable")[:top]]
            for name, values in scores.items()
        }


@torch.inference_mode()
def inspect_units(model: RNNLM, ids: np.ndarray, context_id: int, layer: int, state: str = "hidden") -> UnitTrace:
    """Read ids one token at a time; keep layer's `state` ("hidden", or "cell" for an LSTM)."""
    config = model.config
    check(0 <= layer < config.layers, "layer", f"must be 0 to {config.layers - 1} (got {layer})")
    names = state_names(config.cell)
    check(state in names, "state", f"must be one of {', '.join(names)} for a {config.cell} model (got {state!r})")
    stepper = Stepper(model)
    device = next(model.parameters()).device
    per_layer = 2 if config.cell == "lstm" else 1
    which = layer * per_layer + (1 if state == "cell" else 0)
    zeros = torch.zeros(1, config.hidden, device=device)
    layer_state = [zeros] * (config.layers * per_layer)
    T = len(ids)
    logprobs = np.zeros(T, dtype=np.float64)
    activations = torch.zeros(T, config.hidden, device=device)
    tokens = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)
    logits, layer_state = stepper.step(torch.tensor([context_id], device=device), layer_state)
    for t in range(T):
        logprobs[t] = float(torch.log_softmax(logits[0].float(), dim=-1)[tokens[t]])
        logits, layer_state = stepper.step(tokens[t : t + 1], layer_state)
        activations[t] = layer_state[which][0]
    return UnitTrace(logprobs, activations.float().cpu().numpy())
