"""charlm.runs.open.open_run: one call from a run folder to a checked config, tokenizer and model.

Covered here, on a tiny run trained for real:
  * what comes back: the run, its config, the tokenizer that matches it, the weights of the
    checkpoint asked for (auto takes best, else last) in eval mode on the device asked for;
  * Generator and Scorer given the path give what they give with open_run's model and
    tokenizer, and report the same checkpoint;
  * a folder that is not a run, a missing checkpoint and a tokenizer copied from another run
    are each refused with one CharlmError before any weights are used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import numbered_lines, train_tiny_run, word_text
from safetensors.torch import load_file

from charlm.config import SampleConfig
from charlm.errors import CharlmError
from charlm.inference.generate import Generator
from charlm.inference.scorer import Scorer
from charlm.runs.directory import BEST, LAST, WEIGHTS_FILE, RunDirectory
from charlm.runs.open import OpenRun, open_run
from charlm.text.tokenizer import TOKENIZER_FILE

STEPS = 12
TRAIN = dict(batch_size=4, seq_len=16, warmup_steps=2, max_steps=STEPS, eval_every=6, eval_batch_size=2,
             checkpoint_every=6, log_every=STEPS)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A char-level LSTM trained for STEPS steps, with best and last checkpoints; read-only."""
    return train_tiny_run(tmp_path_factory.mktemp("open-run"), numbered_lines(150), model=dict(hidden=16, embed=8),
                          **TRAIN)  # fmt: skip


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    """A run on other text, so another vocabulary."""
    return train_tiny_run(tmp_path_factory.mktemp("open-other"), word_text(4000).upper(),
                          model=dict(hidden=16, embed=8), **TRAIN)  # fmt: skip


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / WEIGHTS_FILE))


def test_open_run_gives_the_checked_config_tokenizer_and_model(run):
    opened = open_run(run)
    assert isinstance(opened, OpenRun)
    assert opened.path == run and opened.run.path == run
    assert opened.config == RunDirectory(run).read_config()
    assert opened.tokenizer.vocab_size == opened.config.model.vocab_size
    assert opened.tokenizer.decode(opened.tokenizer.encode("line 7: fox").tolist()) == "line 7: fox"
    assert opened.checkpoint == RunDirectory(run).load_model("auto")[1]
    assert not opened.model.training  # ready for inference
    assert all(p.device.type == "cpu" for p in opened.model.parameters())
    stored = weights_of(RunDirectory(run).checkpoint_dir(opened.checkpoint))
    for name, tensor in opened.model.state_dict().items():
        assert torch.equal(tensor, stored[name]), name


def test_open_run_loads_the_checkpoint_asked_for(run):
    best, last = open_run(run, BEST), open_run(run, LAST)
    assert (best.checkpoint, last.checkpoint) == (BEST, LAST)
    best_dir, last_dir = (RunDirectory(run).checkpoint_dir(name) for name in (BEST, LAST))
    for opened, folder in ((best, best_dir), (last, last_dir)):
        stored = weights_of(folder)
        assert all(torch.equal(t, stored[n]) for n, t in opened.model.state_dict().items())
    assert open_run(run, "auto").checkpoint == BEST


def test_generator_and_scorer_from_a_path_use_open_run(run):
    opened = open_run(run)
    config = SampleConfig(temperature=1.0)
    from_path = Generator(run)
    from_model = Generator(opened.model, opened.tokenizer)
    assert from_path.checkpoint == opened.checkpoint and from_model.checkpoint is None
    assert (
        from_path.generate("line 3", 80, config=config, seed=4).text
        == from_model.generate("line 3", 80, config=config, seed=4).text
    )
    scorer = Scorer(run)
    assert scorer.checkpoint == opened.checkpoint and scorer.config == opened.config
    assert scorer.lanes == opened.config.train.eval_batch_size  # the run's own validation lanes
    text = numbered_lines(20)
    assert (
        scorer.score_text(text).nll == Scorer(opened.model, opened.tokenizer, lanes=scorer.lanes).score_text(text).nll
    )


def test_open_run_refuses_what_is_not_a_usable_run(run, other_run, tmp_path):
    with pytest.raises(CharlmError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharlmError, match="is not a charlm run"):
        open_run(tmp_path / "empty")

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / BEST)
    assert open_run(copy).checkpoint == LAST  # auto falls back to last
    with pytest.raises(CharlmError, match="no best checkpoint"):
        open_run(copy, BEST)
    with pytest.raises(CharlmError, match="checkpoint must be best, last or auto"):
        open_run(copy, "newest")

    shutil.copy(other_run / TOKENIZER_FILE, copy / TOKENIZER_FILE)  # another run's vocabulary
    with pytest.raises(CharlmError, match="copied from another run"):
        open_run(copy)
