"""Validation inside the time budget: a pass during training scores a sample of the split
(the first windows of every lane, --eval-tokens), the closing pass scores all of it and
reports the sample's loss beside, and the best checkpoint is chosen on that same sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_corpus, new_trainer, of_kind, word_text

from charlm.config import ModelConfig, TrainConfig
from charlm.errors import OptionError
from charlm.inference.scoring import score_tokens
from charlm.models.rnnlm import RNNLM


@pytest.fixture
def model() -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(vocab_size=20, layers=1, hidden=16, embed=8, dropout=0.0))


def test_a_sample_is_the_full_pass_running_total_after_its_windows(model):
    tokens = np.random.default_rng(0).integers(0, 20, size=9000).astype(np.uint16)
    full = score_tokens(model, tokens, 0, lanes=4, window=50, prefix_windows=3)
    sample = score_tokens(model, tokens, 0, lanes=4, window=50, prefix_windows=3, prefix_only=True)
    assert full.tokens == 9000 and sample.tokens == 4 * 3 * 50
    assert full.prefix.tokens == sample.tokens
    assert full.prefix.nll == pytest.approx(sample.nll, rel=1e-12)
    assert sample.prefix is None and 0 < sample.nll < full.nll


def test_a_sample_as_long_as_the_text_is_the_whole_score(model):
    tokens = np.random.default_rng(1).integers(0, 20, size=2100).astype(np.uint16)
    full = score_tokens(model, tokens, 0, lanes=2, window=100, prefix_windows=50)
    sampled = score_tokens(model, tokens, 0, lanes=2, window=100, prefix_windows=50, prefix_only=True)
    assert full.prefix is full
    assert sampled.tokens == full.tokens == 2100 and sampled.nll == pytest.approx(full.nll, rel=1e-12)


def test_training_validates_on_a_sample_and_closes_on_the_whole_split(tmp_path):
    corpus = make_corpus(tmp_path, word_text(40_000), val_fraction=0.25)
    val = len(corpus.splits["val"])
    events: list = []
    trainer = new_trainer(tmp_path / "run", corpus, train=dict(max_steps=30, eval_every=10, eval_tokens=1000,
                                                                eval_batch_size=4), events=events)  # fmt: skip
    trainer.run()
    evals = of_kind(events, "eval")
    assert [e["step"] for e in evals] == [10, 20, 30, 30]
    sampled, closing = evals[:3], evals[3]
    assert all(not e["complete"] and 1000 <= e["tokens"] < 2000 for e in sampled)
    assert closing["complete"] and closing["tokens"] == val
    # the closing pass's sample is the very sample the pass before it scored (same weights)
    assert closing["selection_loss"] == pytest.approx(sampled[-1]["loss"], rel=1e-9)
    assert all(e["seconds"] >= 0 for e in evals)
    assert trainer.last_val_loss == closing["loss"]
    assert trainer.best_val_loss == min(e["loss"] for e in sampled)


def test_without_a_cap_every_pass_is_complete_and_none_is_repeated(tmp_path):
    corpus = make_corpus(tmp_path, word_text(20_000))
    events: list = []
    new_trainer(tmp_path / "run", corpus, train=dict(max_steps=20, eval_every=10, eval_tokens=0),
                events=events).run()  # fmt: skip
    evals = of_kind(events, "eval")
    assert [e["step"] for e in evals] == [10, 20]
    assert all(e["complete"] and "selection_loss" not in e for e in evals)


def test_eval_tokens_must_not_be_negative():
    with pytest.raises(OptionError, match="eval_tokens"):
        TrainConfig(eval_tokens=-1).validate()
