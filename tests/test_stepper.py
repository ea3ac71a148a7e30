"""charlm.inference.stepper.Stepper: one token at a time, exactly what the torch modules compute.

The Stepper does the cell arithmetic itself on an RNNLM's weights. For every cell (LSTM, GRU,
RNN with tanh and with ReLU), one and several layers, tied weights with and without the
H -> E projection, and with the layer-0 input table and without it (MAX_INPUT_TABLE_BYTES
0), each step's logits and the final state must equal the model's own forward pass through
nn.LSTM / nn.GRU / nn.RNN on the same weights, from the zero state and from a state the
torch module left after a prefix. Priming on a real trained model is in test_generate.py.
"""

from __future__ import annotations

import pytest
import torch

import charlm.inference.stepper as stepper_module
from charlm.config import ModelConfig
from charlm.inference.stepper import Stepper
from charlm.models.rnnlm import RNNLM

V = 13
CASES = [
    dict(cell="lstm", layers=1, hidden=20, embed=12),
    dict(cell="gru", layers=1, hidden=20, embed=12),
    dict(cell="rnn-tanh", layers=1, hidden=20, embed=12),
    dict(cell="rnn-relu", layers=1, hidden=20, embed=12),
    dict(cell="lstm", layers=3, hidden=16, embed=10),
    dict(cell="gru", layers=3, hidden=16, embed=10),
    dict(cell="rnn-tanh", layers=3, hidden=16, embed=10),
    dict(cell="rnn-relu", layers=3, hidden=16, embed=10),
    dict(cell="lstm", layers=2, hidden=20, embed=12, tie_weights=True),  # projection H -> E
    dict(cell="gru", layers=1, hidden=20, embed=12, tie_weights=True),
    dict(cell="rnn-relu", layers=3, hidden=20, embed=12, tie_weights=True),
    dict(cell="rnn-tanh", layers=1, hidden=16, embed=16, tie_weights=True),  # tied, no projection
]
TOLERANCE = dict(atol=1e-5, rtol=1e-4)


def random_model(seed: int = 0, **options) -> RNNLM:
    """An RNNLM with every weight and bias (the head's too) moved off its initial value."""
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(**{"vocab_size": V, "dropout": 0.0, **options})).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def tensors(state) -> list[torch.Tensor]:
    """(h, c) for an LSTM, h alone for the other cells, as a list."""
    return list(state) if isinstance(state, tuple) else [state]


def case_id(options: dict) -> str:
    return "-".join(str(v) for v in options.values())


@pytest.mark.parametrize("table", [True, False], ids=["input-table", "no-table"])
@pytest.mark.parametrize("options", CASES, ids=case_id)
def test_each_step_equals_the_torch_module_on_the_same_weights(options, table, monkeypatch):
    if not table:
        monkeypatch.setattr(stepper_module, "MAX_INPUT_TABLE_BYTES", 0)
    model = random_model(**options)
    if options.get("tie_weights"):
        assert (model.projection is not None) == (options["hidden"] != options["embed"])
    stepper = Stepper(model)
    assert (stepper.input_table is not None) == table
    B, T = 3, 12
    x = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits, final = model(x)  # nn.LSTM / nn.GRU / nn.RNN over the whole window
        _, middle = model(x[:, :5])
    # from the zero state, every step, and the state at the end
    state = stepper.from_model_state(model.init_state(B))
    for t in range(T):
        step_logits, state = stepper.step(x[:, t], state)
        assert step_logits.shape == (B, V)
        torch.testing.assert_close(step_logits, logits[:, t], **TOLERANCE)
    ours, theirs = tensors(stepper.to_model_state(state)), tensors(final)
    assert len(ours) == len(theirs) == (2 if options["cell"] == "lstm" else 1)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape == (options["layers"], B, options["hidden"])
        torch.testing.assert_close(a, b, **TOLERANCE)
    # from the state the torch module left after a prefix
    state = stepper.from_model_state(middle)
    for t in range(5, T):
        step_logits, state = stepper.step(x[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], **TOLERANCE)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh", "rnn-relu"])
def test_the_input_table_changes_nothing_but_the_speed(cell, monkeypatch):
    model = random_model(seed=3, cell=cell, layers=2, hidden=16, embed=8)
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))

    def run() -> list[torch.Tensor]:
        stepper = Stepper(model)
        state = stepper.from_model_state(model.init_state(2))
        out = []
        for t in range(x.shape[1]):
            step_logits, state = stepper.step(x[:, t], state)
            out.append(step_logits)
        return out

    with_table = run()
    monkeypatch.setattr(stepper_module, "MAX_INPUT_TABLE_BYTES", 0)
    without = run()
    for a, b in zip(with_table, without, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_a_stepper_built_after_the_weights_change_follows_them():
    model = random_model(seed=1, cell="gru", layers=1, hidden=8, embed=8)
    x = torch.tensor([3, 4])
    before, _ = Stepper(model).step(x, Stepper(model).from_model_state(model.init_state(2)))
    with torch.no_grad():
        model.head.bias.add_(1.0)
        model.embedding.weight.mul_(2.0)
        logits, _ = model(x[:, None])
    stepper = Stepper(model)
    after, _ = stepper.step(x, stepper.from_model_state(model.init_state(2)))
    torch.testing.assert_close(after, logits[:, 0], **TOLERANCE)
    assert not torch.allclose(after, before)
