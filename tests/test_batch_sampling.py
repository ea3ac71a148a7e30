"""Sampling rows with their own settings: each row's token depends on its own logits, settings
and uniform number only, and the filters keep what sampling.py's next_token keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charlm.config import SampleConfig
from charlm.inference.batch_sampling import BatchSettings, RowSettings, sample_rows
from charlm.inference.sampling import next_token

V = 50
ROWS = [
    RowSettings(temperature=0.7),
    RowSettings(temperature=1.0, top_k=3),
    RowSettings(temperature=1.3, top_p=0.5),
    RowSettings(greedy=True),
    RowSettings(temperature=0.0),
    RowSettings(temperature=1.0, top_k=10, top_p=0.8),
]


def logits_for(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_a_row_draws_the_same_token_alone_or_in_any_batch():
    logits = logits_for(len(ROWS))
    rng = np.random.default_rng(0)
    for _ in range(50):
        uniforms = rng.random(len(ROWS))
        together = sample_rows(logits, BatchSettings(ROWS, V, torch.device("cpu")), uniforms)
        for b, row in enumerate(ROWS):
            alone = sample_rows(logits[b : b + 1], BatchSettings([row], V, torch.device("cpu")), uniforms[b : b + 1])
            assert int(alone) == int(together[b])


def test_greedy_rows_take_the_argmax():
    logits = logits_for(len(ROWS), seed=1)
    tokens = sample_rows(logits, BatchSettings(ROWS, V, torch.device("cpu")), np.full(len(ROWS), 0.999))
    assert int(tokens[3]) == int(logits[3].argmax()) and int(tokens[4]) == int(logits[4].argmax())


@pytest.mark.parametrize("row", [r for r in ROWS if not r.is_greedy], ids=str)
def test_draws_follow_the_filtered_distribution(row):
    logits = logits_for(1, seed=2)
    config = SampleConfig(temperature=row.temperature, top_k=row.top_k, top_p=row.top_p)
    reference = torch.cat([next_token(logits, config, torch.Generator().manual_seed(i)) for i in range(3000)])
    draws = 3000
    settings = BatchSettings([row], V, torch.device("cpu"))
    uniforms = np.random.default_rng(1).random(draws)
    ours = torch.cat([sample_rows(logits, settings, uniforms[i : i + 1]) for i in range(draws)])
    if row.top_k is not None:  # nothing the filter drops
        assert set(ours.tolist()) <= set(torch.topk(logits[0], row.top_k).indices.tolist())
    expected = np.bincount(reference.numpy(), minlength=V) / len(reference)
    observed = np.bincount(ours.numpy(), minlength=V) / draws
    assert np.abs(expected - observed).max() < 0.05, (expected[expected > 0], observed[observed > 0])


def test_forbidden_tokens_are_never_drawn_even_at_the_edges():
    logits = logits_for(2, seed=3)
    logits[:, :45] = float("-inf")  # only 45..49 allowed
    settings = BatchSettings([RowSettings(temperature=1.0), RowSettings(temperature=2.0, top_p=0.99)], V,
                             torch.device("cpu"))  # fmt: skip
    for u in (0.0, 1e-12, 0.5, 1 - 1e-12, np.nextafter(1.0, 0.0)):
        tokens = sample_rows(logits, settings, np.array([u, u]))
        assert all(45 <= t < V for t in tokens.tolist())
