"""The optimizer's parameter groups and the learning-rate schedule (charlm.training.optim).

Weight matrices are decayed; biases and the embedding table are not; a tied output matrix
(head.weight IS embedding.weight) is one parameter, named embedding.weight, and not decayed,
on purpose (optim.py says why). The groups come in a fixed order (decay, then no decay),
which the saved optimizer state depends on. The schedule warms up linearly, then follows a
cosine from lr to lr * min_lr_ratio over the run's progress.
"""

from __future__ import annotations

import math

import pytest
import torch

from charlm.config import ModelConfig, TrainConfig
from charlm.models.rnnlm import RNNLM
from charlm.training.optim import build_optimizer, learning_rate


def _groups(**model):
    config = ModelConfig(vocab_size=30, **{"cell": "lstm", "layers": 2, "hidden": 24, "embed": 16, **model})
    net = RNNLM(config)
    optimizer = build_optimizer(net, TrainConfig(weight_decay=0.1))
    names = {id(p): name for name, p in net.named_parameters()}
    decay, no_decay = optimizer.param_groups
    return net, [names[id(p)] for p in decay["params"]], [names[id(p)] for p in no_decay["params"]], optimizer


def test_matrices_decay_and_biases_and_the_embedding_do_not():
    net, decay, no_decay, optimizer = _groups(tie_weights=False)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert decay == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1", "head.weight"]
    assert no_decay == ["embedding.weight", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "rnn.bias_ih_l1", "rnn.bias_hh_l1",
                        "head.bias"]  # fmt: skip
    assert len(decay) + len(no_decay) == len(list(net.parameters()))  # every parameter, once


def test_a_tied_output_matrix_is_the_embedding_and_is_not_decayed():
    net, decay, no_decay, _ = _groups(tie_weights=True)
    assert net.head.weight is net.embedding.weight
    assert "embedding.weight" in no_decay and "head.weight" not in decay + no_decay
    assert "projection.weight" in decay  # hidden 24 != embed 16: the H -> E map is a matrix
    assert len(decay) + len(no_decay) == len(list(net.parameters()))


def test_a_skipped_tied_matrix_stays_put_under_weight_decay():
    """A decayed parameter shrinks even with a zero gradient; the tied matrix must not."""
    net, _, _, optimizer = _groups(tie_weights=True)
    before = net.embedding.weight.detach().clone()
    decayed = net.rnn.weight_hh_l0.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(net.embedding.weight, before)
    assert not torch.equal(net.rnn.weight_hh_l0, decayed)


def test_the_schedule_warms_up_then_follows_a_cosine():
    config = TrainConfig(lr=1e-2, min_lr_ratio=0.1, warmup_steps=4)
    assert learning_rate(config, 0, 0.0) == pytest.approx(1e-2 / 4)
    assert learning_rate(config, 3, 0.0) == pytest.approx(1e-2)
    assert learning_rate(config, 100, 0.5) == pytest.approx(1e-3 + 9e-3 * 0.5)
    assert learning_rate(config, 100, 1.0) == pytest.approx(1e-3)
    assert learning_rate(config, 100, 7.0) == pytest.approx(1e-3)  # past the budget: the floor
    assert learning_rate(config, 100, 0.25) == pytest.approx(1e-3 + 9e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(TrainConfig(lr=1e-2, warmup_steps=0), 0, 0.0) == pytest.approx(1e-2)
