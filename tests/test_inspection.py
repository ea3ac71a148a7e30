"""inspection.py against the fused kernels: the per-token log-probabilities equal a whole-text
forward pass, and the stepped states equal what nn.LSTM/GRU/RNN give for the same text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charlm.config import ModelConfig
from charlm.errors import OptionError
from charlm.inference.inspection import inspect_units, state_names, token_logprobs
from charlm.models.rnnlm import RNNLM

CONTEXT = 0


def model_of(cell: str) -> RNNLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, cell=cell, layers=2, hidden=16, embed=8, dropout=0.0, tie_weights=False)
    return RNNLM(config).eval()


IDS = np.random.default_rng(0).integers(1, 20, size=300)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh", "rnn-relu"])
def test_states_and_logprobs_match_the_fused_forward(cell):
    model = model_of(cell)
    inputs = torch.as_tensor(np.concatenate([[CONTEXT], IDS]))[None]  # (1, T+1)
    with torch.no_grad():
        logits, _ = model(inputs[:, :-1])
        expected = torch.log_softmax(logits[0], -1).gather(1, inputs[0, 1:, None]).squeeze(1).numpy()
        top_outputs, _ = model.rnn(model.embedding(inputs[:, 1:]), model.rnn(model.embedding(inputs[:, :1]))[1])
    np.testing.assert_allclose(token_logprobs(model, IDS, CONTEXT, window=64), expected, atol=1e-5)
    trace = inspect_units(model, IDS, CONTEXT, layer=1)
    np.testing.assert_allclose(trace.logprobs, expected, atol=1e-5)
    np.testing.assert_allclose(trace.activations, top_outputs[0].numpy(), atol=1e-5)
    assert trace.activations.shape == (len(IDS), 16)


def test_an_lstm_shows_its_cell_state_and_the_ranking_orders_units():
    model = model_of("lstm")
    cell = inspect_units(model, IDS[:50], CONTEXT, layer=0, state="cell")
    hidden = inspect_units(model, IDS[:50], CONTEXT, layer=0, state="hidden")
    assert not np.allclose(cell.activations, hidden.activations)
    ranking = cell.ranking(top=4)
    active = [score for _, score in ranking["active"]]
    assert active == sorted(active, reverse=True) and len(active) == 4
    assert ranking["active"][0][0] == int(np.abs(cell.activations).mean(0).argmax())
    assert state_names("gru") == ["hidden"]
    with pytest.raises(OptionError, match="state"):
        inspect_units(model_of("gru"), IDS[:5], CONTEXT, layer=0, state="cell")
    with pytest.raises(OptionError, match="layer"):
        inspect_units(model, IDS[:5], CONTEXT, layer=2)
