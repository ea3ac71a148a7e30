"""Tests for charlm.models.rnnlm: the RNNLM module and its recurrent-state helpers.

Covers output and state shapes for every cell (lstm, gru, rnn-tanh, rnn-relu and the alias
rnn) at several depths; tied embedding/head weights with and without the H -> E projection;
that carrying the state across two calls gives the same logits as one call over the whole
sequence; detach_state (graph cut, fp32 output, tuple and tensor states); dropout in train
versus eval mode; and that invalid ModelConfig values raise CharlmError naming the option.
All models are tiny and run on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from charlm.config import CELLS, ModelConfig
from charlm.errors import CharlmError
from charlm.models import state as states
from charlm.models.rnnlm import RNNLM

ALL_CELLS = list(CELLS) + ["rnn"]  # "rnn" is an alias of rnn-tanh
V = 11  # vocabulary size used throughout


def make_model(seed: int = 0, **overrides) -> RNNLM:
    options = dict(vocab_size=V, cell="lstm", layers=1, hidden=24, embed=16, dropout=0.0, tie_weights=False)
    options.update(overrides)
    torch.manual_seed(seed)
    return RNNLM(ModelConfig(**options))


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (batch, length), generator=generator)


# ----- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_forward_shapes_for_every_cell_and_depth(cell, layers):
    B, T, H = 3, 7, 20
    model = make_model(cell=cell, layers=layers, hidden=H, embed=12)
    logits, state = model(tokens(B, T))
    assert logits.shape == (B, T, V)
    assert logits.dtype == torch.float32
    if model.config.cell == "lstm":
        assert isinstance(state, tuple) and len(state) == 2
        h, c = state
        assert h.shape == (layers, B, H)
        assert c.shape == (layers, B, H)
    else:
        assert isinstance(state, torch.Tensor)
        assert state.shape == (layers, B, H)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_init_state_matches_forward_state_and_equals_no_state(cell):
    B, T, L, H = 2, 5, 2, 16
    model = make_model(cell=cell, layers=L, hidden=H).eval()
    zero = model.init_state(B)
    x = tokens(B, T)
    with torch.no_grad():
        logits_none, state_none = model(x)
        logits_zero, state_zero = model(x, zero)
    # an explicit zero state is the same as no state
    torch.testing.assert_close(logits_zero, logits_none)
    for a, b in zip(states.to_tensors(state_zero), states.to_tensors(state_none)):
        assert a.shape == b.shape == (L, B, H)
        torch.testing.assert_close(a, b)
    for t in states.to_tensors(zero):
        assert t.shape == (L, B, H)
        assert torch.count_nonzero(t) == 0


def test_cell_alias_and_module_types():
    assert ModelConfig(vocab_size=V, cell="rnn").cell == "rnn-tanh"
    assert isinstance(make_model(cell="lstm").rnn, nn.LSTM)
    assert isinstance(make_model(cell="gru").rnn, nn.GRU)
    tanh = make_model(cell="rnn").rnn
    relu = make_model(cell="rnn-relu").rnn
    assert isinstance(tanh, nn.RNN) and tanh.nonlinearity == "tanh"
    assert isinstance(relu, nn.RNN) and relu.nonlinearity == "relu"


def test_initialisation_keeps_an_untied_embedding_at_unit_scale():
    # A small untied embedding starves the first layer: training was measurably slower.
    untied = make_model(vocab_size=500, embed=64)
    assert 0.8 < untied.embedding.weight.std().item() < 1.2
    tied = make_model(vocab_size=500, embed=64, tie_weights=True)
    assert tied.embedding.weight.std().item() < 0.1  # it is the output matrix too
    assert torch.count_nonzero(untied.head.bias) == 0


def test_state_tensors_round_trip():
    h, c = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    pair = states.from_tensors(states.to_tensors((h, c)))
    assert isinstance(pair, tuple) and pair[0] is h and pair[1] is c
    single = states.from_tensors(states.to_tensors(h))
    assert single is h


# ----- tied weights ---------------------------------------------------------------------


def test_tied_weights_share_storage_without_projection():
    model = make_model(tie_weights=True, hidden=16, embed=16)
    assert model.head.weight is model.embedding.weight
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()
    assert model.projection is None
    logits, _ = model(tokens(2, 4))
    assert logits.shape == (2, 4, V)
    # the shared matrix is counted once
    untied = make_model(tie_weights=False, hidden=16, embed=16)
    assert untied.num_parameters() - model.num_parameters() == V * 16


def test_tied_weights_with_projection_when_widths_differ():
    E, H = 12, 28
    model = make_model(tie_weights=True, hidden=H, embed=E, layers=2)
    assert model.head.weight is model.embedding.weight
    assert isinstance(model.projection, nn.Linear)
    assert model.projection.weight.shape == (E, H)
    assert model.projection.bias is None
    assert model.head.weight.shape == (V, E)
    logits, state = model(tokens(3, 5))
    assert logits.shape == (3, 5, V)
    assert state[0].shape == (2, 3, H)
    # a gradient through the head reaches the (shared) embedding matrix from both uses
    logits.sum().backward()
    assert model.embedding.weight.grad is not None
    assert model.projection.weight.grad is not None


def test_untied_model_has_separate_head():
    E, H = 12, 28
    model = make_model(tie_weights=False, hidden=H, embed=E)
    assert model.projection is None
    assert model.head.weight is not model.embedding.weight
    assert model.head.weight.shape == (V, H)
    assert model.embedding.weight.shape == (V, E)


# ----- carrying the state ---------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_carried_state_equals_one_long_forward(cell, tie):
    B, T, split = 3, 12, 5
    model = make_model(cell=cell, layers=2, hidden=20, embed=12, tie_weights=tie).eval()
    x = tokens(B, T, seed=7)
    with torch.no_grad():
        full_logits, full_state = model(x)
        first_logits, state = model(x[:, :split])
        second_logits, end_state = model(x[:, split:], state)
        restarted_logits, _ = model(x[:, split:])  # the second half without the carried state
    torch.testing.assert_close(torch.cat([first_logits, second_logits], dim=1), full_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(states.to_tensors(end_state), states.to_tensors(full_state)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # and the state really matters: dropping it changes the second half
    assert not torch.allclose(restarted_logits, second_logits, atol=1e-4)


# ----- detach_state ---------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_detach_state_cuts_graph(cell):
    model = make_model(cell=cell, layers=2)
    _, state = model(tokens(2, 6))
    for t in states.to_tensors(state):
        assert t.grad_fn is not None  # precondition: the state is part of the graph
    detached = states.detach(state)
    assert type(detached) is type(state)
    for before, after in zip(states.to_tensors(state), states.to_tensors(detached)):
        assert after.grad_fn is None
        assert not after.requires_grad
        assert after.dtype == torch.float32
        assert torch.equal(after, before.detach())


def test_detach_state_turns_bf16_into_float32():
    h = torch.randn(2, 3, 4, requires_grad=True)
    c = torch.randn(2, 3, 4, requires_grad=True)
    h16, c16 = (h * 2).to(torch.bfloat16), (c * 2).to(torch.bfloat16)
    out = states.detach((h16, c16))
    assert isinstance(out, tuple) and len(out) == 2
    for original, t in zip((h16, c16), out):
        assert t.dtype == torch.float32
        assert t.grad_fn is None and not t.requires_grad
        assert torch.equal(t, original.detach().float())
    single = states.detach(h16)
    assert isinstance(single, torch.Tensor)
    assert single.dtype == torch.float32 and single.grad_fn is None
    assert torch.equal(single, h16.detach().float())


def test_gradient_stops_at_detached_state():
    model = make_model(cell="gru")
    x = tokens(2, 4)
    _, state = model(x[:, :2])
    state.retain_grad()
    logits, _ = model(x[:, 2:], states.detach(state))
    logits.sum().backward(retain_graph=True)
    # the second window's loss does not reach into the first window's graph ...
    assert state.grad is None
    # ... while the same forward from the undetached state does
    logits, _ = model(x[:, 2:], state)
    logits.sum().backward()
    assert state.grad is not None and torch.count_nonzero(state.grad) > 0


# ----- dropout --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh"])
def test_dropout_only_in_train_mode(cell):
    model = make_model(cell=cell, layers=2, dropout=0.5)
    assert model.rnn.dropout == 0.5  # between layers too
    x = tokens(4, 10)
    model.eval()
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, _ = model(x)
        d, _ = model(x)
    assert not torch.allclose(c, d)
    assert not torch.allclose(c, a)


def test_no_dropout_means_train_mode_is_deterministic():
    model = make_model(cell="lstm", layers=2, dropout=0.0).train()
    x = tokens(2, 6)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x)
    assert torch.equal(a, b)


def test_single_layer_has_no_between_layer_dropout():
    model = make_model(layers=1, dropout=0.3)
    assert model.rnn.dropout == 0.0
    assert model.drop.p == 0.3


# ----- invalid configurations -----------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, option",
    [
        ({"layers": 0}, "layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"cell": "transformer"}, "cell"),
        ({"hidden": 0}, "hidden"),
        ({"embed": 0}, "embed"),
        ({"vocab_size": 1}, "vocab_size"),
    ],
)
def test_invalid_model_config_names_the_option(overrides, option):
    options = dict(vocab_size=V, cell="lstm", layers=1, hidden=8, embed=8, dropout=0.0)
    options.update(overrides)
    config = ModelConfig(**options)
    with pytest.raises(CharlmError) as info:
        config.validate()
    assert str(info.value).startswith(f"{option} must")  # the field's name; the CLI shows its flag
    with pytest.raises(CharlmError) as info:
        RNNLM(config)
    assert str(info.value).startswith(f"{option} must")


def test_valid_edge_values_are_accepted():
    ModelConfig(vocab_size=2, layers=1, hidden=1, embed=1, dropout=0.0).validate()
    ModelConfig(vocab_size=2, dropout=0.99).validate()
