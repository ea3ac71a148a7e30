"""charlm.config: ModelConfig, TrainConfig, SampleConfig and RunConfig, on their own.

Covered here: every field's range check (one bad value each, named in the error with the
problem, and the good value beside it accepted), the type checks that guard a hand-edited
config.json (whole numbers, numbers, finite numbers, true/false, text), to_dict/from_dict
round trips through real JSON, unknown fields refused naming them, from_dict validating
what it builds, stop_limits' default time budget, and the cell alias "rnn". A config
written to a run directory and read back is in test_checkpoint.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from charlm.config import (
    DEFAULT_MAX_TIME_S,
    MAX_SEED,
    MAX_SPM_VOCAB,
    ModelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
)
from charlm.errors import CharlmError


def naming(field: str, problem: str) -> str:
    """A pattern for an error about `field` that says `problem`: the library may spell the
    field as a caller writes it (lr, batch_size) or as the CLI flag (--lr, --batch-size)."""
    spelled = re.escape(field).replace("_", "[_-]")
    return rf"^(--)?{spelled} {re.escape(problem)}"


def model(**overrides) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 13, "layers": 1, "hidden": 8, "embed": 4, **overrides})


def run_config_dict() -> dict:
    return RunConfig(model=model(), train=TrainConfig(max_steps=10), tokenizer_kind="char").to_dict()


# ---------------------------------------------------------------------------------------
# one bad value per field


MODEL_CASES = [
    ("vocab_size", 1, 2, "must be at least 2"),
    ("cell", "transformer", "gru", "must be one of lstm, gru, rnn-tanh, rnn-relu"),
    ("layers", 0, 1, "must be at least 1"),
    ("hidden", 0, 1, "must be at least 1"),
    ("embed", -1, 1, "must be at least 1"),
    ("dropout", 1.0, 0.99, "must be in [0, 1)"),
    ("dropout", -0.1, 0.0, "must be in [0, 1)"),
]


@pytest.mark.parametrize("field, bad, good, problem", MODEL_CASES, ids=[f"{c[0]}={c[1]}" for c in MODEL_CASES])
def test_model_config_checks_each_field(field, bad, good, problem):
    model(**{field: good}).validate()
    with pytest.raises(CharlmError, match=naming(field, problem)):
        model(**{field: bad}).validate()


TRAIN_CASES = [
    ("val_fraction", 1.0, 0.5, {}, "must be in [0, 1)"),
    ("test_fraction", -0.1, 0.0, {}, "must be in [0, 1)"),
    ("val_fraction", 0.6, 0.3, {"test_fraction": 0.4}, "plus --test-fraction must leave something to train on"),
    ("tokenizer", "words", "byte", {}, "must be one of char, byte, sentencepiece"),
    ("spm_model_type", "wordpiece", "bpe", {}, "must be one of unigram, bpe"),
    ("encoding_errors", "ignore", "replace", {}, "must be one of strict, replace"),
    ("vocab_size", 260, 261, {"tokenizer": "sentencepiece"}, "must be above 260 for sentencepiece"),
    ("vocab_size", MAX_SPM_VOCAB + 1, MAX_SPM_VOCAB, {"tokenizer": "sentencepiece"}, "must be at most 1,000,000"),
    ("batch_size", 0, 1, {}, "must be at least 1"),
    ("seq_len", 0, 1, {}, "must be at least 1"),
    ("lr", 0.0, 1e-9, {}, "must be positive"),
    ("min_lr_ratio", 1.5, 1.0, {}, "must be in [0, 1]"),
    ("warmup_steps", -1, 0, {}, "must be 0 or more"),
    ("weight_decay", -0.01, 0.0, {}, "must be 0 or more"),
    ("grad_clip", -1.0, 0.0, {}, "must be 0 (off) or more"),
    ("precision", "fp8", "bf16", {}, "must be one of auto, fp32, bf16, fp16"),
    ("device", "tpu", "cuda", {}, "must be one of auto, cpu, cuda"),
    ("seed", MAX_SEED, MAX_SEED - 1, {}, "must be from 0 to"),
    ("seed", -1, 0, {}, "must be from 0 to"),
    ("threads", 0, 1, {}, "must be at least 1"),
    ("max_steps", 0, 1, {}, "must be at least 1"),
    ("max_time", 0.0, 0.5, {}, "must be positive"),
    ("epochs", 0.0, 0.25, {}, "must be positive"),
    ("eval_every", 0, 1, {}, "must be at least 1"),
    ("eval_batch_size", 0, 1, {}, "must be at least 1"),
    ("checkpoint_every", 0, 1, {}, "must be at least 1"),
    ("log_every", 0, 1, {}, "must be at least 1"),
    ("on_divergence", "ignore", "stop", {}, "must be one of skip, rollback, stop"),
    ("spike_factor", 1.0, 0.0, {}, "must be 0 (off) or above 1"),
    ("skip_limit", 0, 1, {}, "must be at least 1"),
    ("max_rollbacks", -1, 0, {}, "must be 0 or more"),
    ("rollback_lr_factor", 0.0, 1.0, {}, "must be in (0, 1]"),
    ("sample_length", -1, 0, {}, "must be 0 or more"),
]


@pytest.mark.parametrize("field, bad, good, base, problem", TRAIN_CASES, ids=[f"{c[0]}={c[1]}" for c in TRAIN_CASES])
def test_train_config_checks_each_field(field, bad, good, base, problem):
    TrainConfig(**base, **{field: good}).validate()
    with pytest.raises(CharlmError, match=naming(field, problem)):
        TrainConfig(**base, **{field: bad}).validate()


def test_checkpoint_seconds_must_be_a_positive_time():
    TrainConfig(checkpoint_seconds=None).validate()  # steps only
    # named as the field, or as the --checkpoint-every flag that sets it
    with pytest.raises(
        CharlmError, match=r"^(--)?checkpoint[_-](every|seconds) must be a positive time \(got -5.0 s\)"
    ):
        TrainConfig(checkpoint_seconds=-5.0).validate()


def test_every_train_field_has_a_default_that_validates():
    config = TrainConfig()
    config.validate()
    assert config.vocab_size == 2000 and config.tokenizer == "char"  # a char run ignores vocab_size


SAMPLE_CASES = [
    ("temperature", -0.5, 0.0, "must be 0 (greedy) or a finite positive number"),
    ("top_k", 0, 1, "must be at least 1"),
    ("top_p", 0.0, 1.0, "must be in (0, 1]"),
    ("top_p", 1.5, 0.01, "must be in (0, 1]"),
]


@pytest.mark.parametrize("field, bad, good, problem", SAMPLE_CASES, ids=[f"{c[0]}={c[1]}" for c in SAMPLE_CASES])
def test_sample_config_checks_each_field(field, bad, good, problem):
    SampleConfig(**{field: good}).validate()
    with pytest.raises(CharlmError, match=naming(field, problem)):
        SampleConfig(**{field: bad}).validate()


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_temperature_must_be_finite(value):
    with pytest.raises(CharlmError, match=naming("temperature", "must be")):
        SampleConfig(temperature=value).validate()


# ---------------------------------------------------------------------------------------
# types, as a hand-edited config.json may give them


TYPE_CASES = [
    (ModelConfig, "layers", 1.5, "must be a whole number (got 1.5)"),
    (ModelConfig, "hidden", "16", "must be a whole number (got '16')"),
    (ModelConfig, "vocab_size", True, "must be a whole number (got True)"),
    (ModelConfig, "dropout", "0.1", "must be a number (got '0.1')"),
    (ModelConfig, "dropout", False, "must be a number (got False)"),
    (ModelConfig, "dropout", math.nan, "must be a finite number (got nan)"),
    (ModelConfig, "tie_weights", 1, "must be true or false (got 1)"),
    (ModelConfig, "cell", 3, "must be text (got 3)"),
    (TrainConfig, "max_steps", 10.0, "must be a whole number (got 10.0)"),
    (TrainConfig, "threads", "2", "must be a whole number (got '2')"),
    (TrainConfig, "lr", math.inf, "must be a finite number (got inf)"),
    (TrainConfig, "max_time", "1h", "must be a number (got '1h')"),
    (TrainConfig, "random_offset", "yes", "must be true or false (got 'yes')"),
    (TrainConfig, "val_data", 7, "must be text (got 7)"),
    (SampleConfig, "top_k", 2.5, "must be a whole number (got 2.5)"),
    (SampleConfig, "top_p", "0.9", "must be a number (got '0.9')"),
]


@pytest.mark.parametrize("cls, field, value, problem", TYPE_CASES,
                         ids=[f"{c[0].__name__}.{c[1]}={c[2]!r}" for c in TYPE_CASES])  # fmt: skip
def test_values_of_the_wrong_type_are_refused_by_name(cls, field, value, problem):
    base = {"vocab_size": 13} if cls is ModelConfig and field != "vocab_size" else {}
    with pytest.raises(CharlmError, match=naming(field, problem)):
        cls(**base, **{field: value}).validate()


def test_whole_numbers_are_numbers_and_none_means_unset():
    TrainConfig(lr=1, max_time=60, epochs=None, max_steps=None, threads=None).validate()
    SampleConfig(temperature=1, top_k=None, top_p=1).validate()
    model(dropout=0).validate()


# ---------------------------------------------------------------------------------------
# dict round trips, unknown fields, from_dict validating


def test_small_configs_round_trip():
    for config in (
        model(cell="gru", layers=3, dropout=0.25, tie_weights=True),
        TrainConfig(epochs=2.0, val_data="v.txt", threads=2, checkpoint_every=None, seed=MAX_SEED - 1),
        SampleConfig(temperature=0.5, top_k=3, top_p=0.9),
    ):
        data = json.loads(json.dumps(config.to_dict()))
        assert data == dataclasses.asdict(config)  # every field, under its own name
        assert type(config).from_dict(data) == config


def test_run_config_round_trips_through_json():
    original = RunConfig(model=model(cell="rnn-relu"), train=TrainConfig(max_steps=5, lr=1e-3),
                         tokenizer_kind="byte", charlm_version="1.2.3", tokenizer_fingerprint="abc",
                         extra={"note": ["x", 1]})  # fmt: skip
    data = json.loads(json.dumps(original.to_dict()))
    assert set(data) == {"format_version", "charlm_version", "tokenizer_kind", "tokenizer_fingerprint",
                         "model", "train", "extra"}  # fmt: skip
    assert RunConfig.from_dict(data) == original


@pytest.mark.parametrize("section", ["model", "train"])
def test_unknown_keys_raise_charlm_error(section):
    data = run_config_dict()
    data[section]["flux_capacitor"] = 1
    with pytest.raises(CharlmError, match="flux_capacitor"):
        RunConfig.from_dict(data)


def test_unknown_keys_in_small_configs():
    with pytest.raises(CharlmError, match="unknown field.*bogus.*newer or different charlm"):
        ModelConfig.from_dict({"vocab_size": 5, "bogus": 1})
    with pytest.raises(CharlmError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(CharlmError, match="bogus"):
        SampleConfig.from_dict({"bogus": 1})


def test_from_dict_validates_values():
    data = run_config_dict()
    data["train"]["batch_size"] = 0
    with pytest.raises(CharlmError, match=naming("batch_size", "must be at least 1")):
        RunConfig.from_dict(data)
    data = run_config_dict()
    data["model"]["cell"] = "transformer"
    with pytest.raises(CharlmError, match=naming("cell", "must be one of")):
        RunConfig.from_dict(data)
    with pytest.raises(CharlmError, match=naming("top_p", "must be in (0, 1]")):
        SampleConfig.from_dict({"top_p": 2.0})


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda d: d.__setitem__("format_version", 2), "format 2 is not supported by this charlm"),
        (lambda d: d.pop("model"), "run config is damaged"),
        (lambda d: d.__setitem__("train", 5), "run config is damaged"),
        (lambda d: d.__setitem__("format_version", "one"), "run config is damaged"),
    ],
    ids=["newer-format", "missing-model", "train-not-a-dict", "format-not-a-number"],
)
def test_run_config_from_a_damaged_dict_is_a_charlm_error(change, needle):
    data = run_config_dict()
    change(data)
    with pytest.raises(CharlmError, match=needle):
        RunConfig.from_dict(data)


# ---------------------------------------------------------------------------------------
# stop limits, the cell alias


def test_stop_limits_default_to_the_time_budget():
    assert TrainConfig().stop_limits() == (None, DEFAULT_MAX_TIME_S, None)
    assert TrainConfig(max_steps=7).stop_limits() == (7, None, None)
    assert TrainConfig(max_time=2.5).stop_limits() == (None, 2.5, None)
    assert TrainConfig(epochs=0.5).stop_limits() == (None, None, 0.5)
    assert TrainConfig(max_steps=3, max_time=9.0, epochs=1.0).stop_limits() == (3, 9.0, 1.0)


def test_the_cell_alias_rnn_is_rnn_tanh():
    config = model(cell="rnn")
    assert config.cell == "rnn-tanh"
    config.validate()
    assert config.to_dict()["cell"] == "rnn-tanh"
    assert ModelConfig.from_dict({"vocab_size": 5, "cell": "rnn"}).cell == "rnn-tanh"
    data = run_config_dict()
    data["model"]["cell"] = "rnn"
    assert RunConfig.from_dict(data).model.cell == "rnn-tanh"
