"""Planning and starting a language-model run through the library (charlm.tasks.lm_run), and
the rules it applies: what may change on a resume, the memory check, the tokenizer check.

Covers: a run set up, trained and resumed with no CLI involved (a changed limit recorded and
kept in config.json); options that cannot change on a resume refused by name; a resumed
run's memory checked with its own vocabulary before the corpus is read (it used to be the
smallest possible vocabulary); a corpus whose tokenizer now differs refused on a resume;
same_tokenizer and prepare_corpus_for; ModelShape and ModelConfig agreeing.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import read_config, read_events, word_text, write_text

from charlm.config import ModelConfig, ModelShape, TrainConfig
from charlm.errors import CharlmError, OptionError
from charlm.runs.directory import CONFIG_FILE
from charlm.tasks.lm_run import LanguageModelRun, plan_run
from charlm.tasks.sizing import SHAPE_DECISIONS
from charlm.text.corpus import prepare_corpus, prepare_corpus_for
from charlm.text.tokenizer import CharTokenizer, fingerprint, same_tokenizer
from charlm.training.preflight import check_training_memory
from charlm.training.resume import RESUMABLE_OPTIONS, apply_resume_options, check_resumable

SHAPE = ModelShape(layers=1, hidden=24, embed=8, dropout=0.0)
OPTIONS = dict(batch_size=4, seq_len=12, max_steps=6, eval_every=3, log_every=1, sample_length=0,
               device="cpu", precision="fp32", threads=1, warmup_steps=2)  # fmt: skip


def train_with_the_library(options, given, out, resume=False, shape=SHAPE):
    run = LanguageModelRun.start(options, shape, given, out, resume=resume)
    run.prepare_corpus()
    run.open_run_directory()
    trainer = run.trainer()
    result = trainer.run()
    trainer.close()
    return run, result


@pytest.fixture
def trained(tmp_path):
    """A run of six steps, made through the library; its corpus path."""
    corpus = write_text(tmp_path / "text.txt", word_text(3000, seed=5))
    options = {**OPTIONS, "data": str(corpus)}
    given = set(options) | set(SHAPE_DECISIONS)  # the shape is the test's, not the budget rule's
    run, result = train_with_the_library(options, given, tmp_path / "run")
    assert result.reason == "max_steps" and run.run_dir.path == tmp_path / "run"
    return tmp_path / "run", corpus


def test_a_run_is_planned_trained_and_resumed_without_the_cli(trained):
    out, corpus = trained
    config = read_config(out)
    assert config["model"] == {**SHAPE.to_dict(), "vocab_size": config["model"]["vocab_size"]}
    assert config["train"]["data"] == str(corpus.resolve())
    run, result = train_with_the_library({"max_steps": 9}, {"max_steps"}, out, resume=True)
    assert run.changed == {"max_steps": [6, 9]}
    assert result.reason == "max_steps"
    assert read_config(out)["train"]["max_steps"] == 9  # kept for later resumes
    resumes = [e for e in read_events(out) if e["event"] == "resume"]
    assert resumes[-1]["changed"] == {"max_steps": [6, 9]}
    with pytest.raises(CharlmError, match="already reached its --max-steps limit"):
        train_with_the_library({}, set(), out, resume=True)


def test_options_that_cannot_change_on_a_resume_are_named(trained):
    out, _ = trained
    before = read_config(out)["train"]["lr"]
    with pytest.raises(CharlmError) as info:
        plan_run({"hidden": 64, "seq_len": 8, "lr": 1e-3}, SHAPE, {"hidden", "seq_len", "lr"}, out, resume=True)
    assert str(info.value).startswith("--hidden, --seq-len cannot change when resuming")
    assert read_config(out)["train"]["lr"] == before != 1e-3  # nothing applied


def test_resume_rules_apply_only_the_given_values():
    config = TrainConfig(max_steps=100, lr=0.01)
    changed = apply_resume_options(config, {"max_steps": 200, "lr": 0.01, "epochs": 3.0}, {"max_steps", "lr"})
    assert changed == {"max_steps": [100, 200]}  # lr given but unchanged; epochs not given
    assert (config.max_steps, config.epochs) == (200, None)
    with pytest.raises(OptionError) as info:
        apply_resume_options(config, {"lr": -1.0}, {"lr"})
    assert info.value.option == "lr"
    check_resumable(RESUMABLE_OPTIONS)  # every resumable option passes
    with pytest.raises(CharlmError, match="--batch-size cannot change"):
        check_resumable({"batch_size", "lr"})


def test_a_resume_checks_memory_with_the_runs_own_vocabulary(trained):
    """Before the corpus is read, a resumed run's vocabulary is known from config.json: a
    vocabulary too large for this machine is refused at once, as a new run's is once its
    tokenizer is fitted (the smallest possible vocabulary, used before, lets it through)."""
    out, _ = trained
    path = out / CONFIG_FILE
    data = json.loads(path.read_text())
    data["model"]["vocab_size"] = 10**9  # the output layer alone: about 800 GB with AdamW
    path.write_text(json.dumps(data))
    check_training_memory(SHAPE, TrainConfig(**OPTIONS), torch.device("cpu"), "fp32")  # the smallest vocabulary fits
    with pytest.raises(CharlmError, match="needs about") as info:
        LanguageModelRun.start({}, SHAPE, set(), out, resume=True)
    assert "memory available" in str(info.value)


def test_a_resume_refuses_a_corpus_whose_tokenizer_changed(trained):
    out, corpus = trained
    corpus.write_text("ZQXJ: letters the run never saw\n" + corpus.read_text())  # into the training split
    run = LanguageModelRun.start({}, SHAPE, set(), out, resume=True)
    run.prepare_corpus()
    with pytest.raises(CharlmError, match="different vocabulary than the run was trained with"):
        run.open_run_directory()


def test_steps_out_of_order_are_refused(tmp_path):
    corpus = write_text(tmp_path / "text.txt", word_text(3000, seed=5))
    run = LanguageModelRun.start({**OPTIONS, "data": str(corpus)}, SHAPE, {"data"}, tmp_path / "run")
    with pytest.raises(CharlmError, match="prepare_corpus"):
        run.open_run_directory()
    run.prepare_corpus()
    with pytest.raises(CharlmError, match="open_run_directory"):
        run.trainer()


def test_same_tokenizer_compares_what_ids_stand_for():
    a = CharTokenizer.fit(["hello world"])
    assert same_tokenizer(a, CharTokenizer.fit(["world hello"]))  # the same symbols
    assert not same_tokenizer(a, CharTokenizer.fit(["hello world!"]))
    assert same_tokenizer(a, fingerprint(a)) and same_tokenizer(fingerprint(a), a)  # as config.json keeps it
    assert not same_tokenizer(fingerprint(a), "0" * 32)


def test_prepare_corpus_for_reads_what_the_config_names(tmp_path):
    text = write_text(tmp_path / "text.txt", word_text(2000, seed=1))
    config = TrainConfig(data=str(text), val_fraction=0.2, test_fraction=0.1, tokenizer="byte")
    ours = prepare_corpus_for(config)
    theirs = prepare_corpus(str(text), val_fraction=0.2, test_fraction=0.1, tokenizer="byte")
    assert ours.cache_dir == theirs.cache_dir and ours.tokenizer.kind == "byte"
    for split in ("train", "val", "test"):
        assert (ours.splits[split] == theirs.splits[split]).all() and len(ours.splits[split])


def test_a_shape_and_its_config_agree():
    config = SHAPE.with_vocabulary(70)
    assert isinstance(config, ModelConfig) and config.vocab_size == 70 and config.shape == SHAPE
    assert list(config.to_dict()) == ["vocab_size", *SHAPE.to_dict()]  # config.json's order, unchanged
    assert ModelShape(cell="rnn").cell == "rnn-tanh"
    with pytest.raises(OptionError) as info:
        ModelShape(hidden=0).validate()
    assert str(info.value) == "hidden must be at least 1 (got 0)"
    with pytest.raises(OptionError, match="vocab_size must be at least 2"):
        SHAPE.with_vocabulary(1).validate()
