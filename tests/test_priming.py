"""Priming: short prompts stepped together, right-aligned, give each prompt's logits and state
as the fused kernel gives them for that prompt alone, for every cell."""

from __future__ import annotations

import pytest
import torch

from charlm.config import ModelConfig
from charlm.inference.priming import prime_fused, prime_stepped
from charlm.inference.stepper import Stepper
from charlm.models.rnnlm import RNNLM


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn-tanh", "rnn-relu"])
def test_prompts_stepped_together_equal_each_alone(cell):
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=30, cell=cell, layers=2, hidden=24, embed=8, dropout=0.0)).eval()
    stepper = Stepper(model)
    prompts = [[3], [5, 6, 7, 8, 9, 10, 11], [1, 2, 3], [29, 28, 27, 26, 25, 24, 23, 22, 21, 20]]
    together, state = prime_stepped(stepper, prompts)
    assert together.shape == (4, 30) and all(t.shape == (4, 24) for t in state)
    for i, ids in enumerate(prompts):
        alone, alone_state = prime_fused(stepper, ids)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)
        for joint, single in zip(state, alone_state):
            torch.testing.assert_close(joint[i : i + 1], single, atol=1e-5, rtol=1e-5)


def test_the_fused_path_shows_every_window_of_a_long_prompt(monkeypatch):
    import charlm.inference.priming as priming

    monkeypatch.setattr(priming, "PRIME_WINDOW", 16)
    torch.manual_seed(1)
    model = RNNLM(ModelConfig(vocab_size=12, cell="lstm", layers=1, hidden=8, embed=4, dropout=0.0)).eval()
    ids = [i % 12 for i in range(40)]
    seen = []
    last, _ = prime_fused(Stepper(model), ids, lambda begin, logits: seen.append((begin, logits.shape[0])))
    assert seen == [(0, 16), (16, 16), (32, 8)]
    with torch.no_grad():
        whole, _ = model(torch.tensor([ids]))
    torch.testing.assert_close(last, whole[:, -1, :], atol=1e-5, rtol=1e-5)
