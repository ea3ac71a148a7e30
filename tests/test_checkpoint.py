"""Tests for charlm.runs.directory.RunDirectory and the run config's JSON form.

Covers saving and loading weights (untied and tied models, identical logits, CPU loading),
which checkpoint load_model('auto') picks and the metadata stored with it, the trainer
state file (loaded with torch.load(weights_only=True)), atomic checkpoint swaps (a failed
save keeps the previous checkpoint and leaves no temporary folders; a leftover `last.old`
from an interrupted swap is still found), RunDirectory.prepare's refusals and overwrite
rules, damaged weights / trainer state / config.json reported as CharlmError, and a
RunConfig written to config.json and read back. Everything is written to real files in
tmp_path; the configs' own validation and dict round trips are in test_config.py.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import hidden_entries, make_corpus, same_weights

from charlm.config import ModelConfig, RunConfig, TrainConfig
from charlm.errors import CharlmError
from charlm.models.rnnlm import RNNLM
from charlm.runs.directory import BEST, CONFIG_FILE, LAST, METRICS_FILE, STATE_FILE, WEIGHTS_FILE, RunDirectory
from charlm.tasks.language_model import Trainer
from charlm.text.tokenizer import TOKENIZER_FILE, CharTokenizer

V = 13


def model_config(**overrides) -> ModelConfig:
    options = dict(vocab_size=V, cell="lstm", layers=2, hidden=24, embed=16, dropout=0.0, tie_weights=False)
    options.update(overrides)
    return ModelConfig(**options)


def new_run(path: Path, config: ModelConfig) -> RunDirectory:
    run = RunDirectory(path)
    run.prepare()
    run.write_config(RunConfig(model=config, train=TrainConfig(max_steps=10), tokenizer_kind="char"))
    run.save_tokenizer(CharTokenizer(ord(c) for c in "abcdefghijkl"))
    return run


def build(config: ModelConfig, seed: int) -> RNNLM:
    torch.manual_seed(seed)
    return RNNLM(config).eval()


def sample_input() -> torch.Tensor:
    return torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(5))


def logits_of(model: RNNLM) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(sample_input())[0]


# ----- save and load --------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_save_then_load_gives_identical_logits(tmp_path, tie):
    config = model_config(tie_weights=tie, embed=16, hidden=24)
    run = new_run(tmp_path / "run", config)
    model = build(config, seed=1)
    run.save_checkpoint(LAST, model, {"step": 7})
    assert (tmp_path / "run" / LAST / WEIGHTS_FILE).is_file()

    fresh = build(config, seed=2)
    assert not torch.allclose(logits_of(fresh), logits_of(model))  # precondition: a different init

    loaded, which = run.load_model(LAST, device="cpu")
    assert which == LAST
    assert isinstance(loaded, RNNLM)
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert torch.equal(logits_of(loaded), logits_of(model))
    assert same_weights(loaded, model)
    if tie:
        # the shared matrix is still one tensor after loading
        assert loaded.head.weight is loaded.embedding.weight
        assert loaded.projection is not None


def test_load_on_cpu_with_torch_device(tmp_path):
    config = model_config(cell="gru", layers=1)
    run = new_run(tmp_path / "run", config)
    model = build(config, seed=3)
    run.save_checkpoint(BEST, model, {"step": 1})
    loaded, which = run.load_model("auto", device=torch.device("cpu"))
    assert which == BEST
    assert torch.equal(logits_of(loaded), logits_of(model))


def test_auto_prefers_best_over_last_and_metadata_round_trips(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    latest, earlier = build(config, seed=10), build(config, seed=11)

    run.save_checkpoint(LAST, latest, {"step": 20, "val_loss": 1.5})
    loaded, which = run.load_model("auto")
    assert which == LAST  # only last exists so far
    assert same_weights(loaded, latest)

    run.save_checkpoint(BEST, earlier, {"step": 12, "val_loss": 1.25})
    loaded, which = run.load_model("auto")
    assert which == BEST
    assert same_weights(loaded, earlier)
    loaded, which = run.load_model(LAST)
    assert which == LAST
    assert same_weights(loaded, latest)

    meta_last, meta_best = run.checkpoint_metadata(LAST), run.checkpoint_metadata(BEST)
    assert meta_last["step"] == 20 and meta_last["val_loss"] == 1.5
    assert meta_best["step"] == 12 and meta_best["val_loss"] == 1.25
    assert isinstance(meta_last["step"], int)


def test_metadata_none_value_and_missing_checkpoint(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    assert run.checkpoint_metadata(LAST) == {}
    assert run.checkpoint_dir(LAST) is None
    with pytest.raises(CharlmError, match="no best or last checkpoint"):
        run.load_model("auto")
    run.save_checkpoint(LAST, build(config, 0), {"step": 0, "val_loss": None})
    meta = run.checkpoint_metadata(LAST)
    assert meta["step"] == 0 and meta["val_loss"] is None
    with pytest.raises(CharlmError, match="no best checkpoint"):
        run.load_model(BEST)
    with pytest.raises(CharlmError, match="best, last or auto"):
        run.load_model("newest")


# ----- the trainer state ----------------------------------------------------------------


def test_trainer_state_loads_with_weights_only(tmp_path):
    corpus = make_corpus(tmp_path, "the quick brown fox jumps over the lazy dog. " * 40)
    mc = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, cell="lstm", layers=2, hidden=16, embed=8, dropout=0.1)
    tc = TrainConfig(batch_size=2, seq_len=8, max_steps=3, eval_every=3, log_every=1, warmup_steps=2, lr=1e-2)
    run = RunDirectory(tmp_path / "run")
    run.prepare()
    run.write_config(RunConfig(model=mc, train=tc, tokenizer_kind=corpus.tokenizer.kind))
    run.save_tokenizer(corpus.tokenizer)
    torch.manual_seed(0)
    trainer = Trainer(mc, tc, corpus, run, torch.device("cpu"), "fp32")
    result = trainer.run()
    assert result.step == 3

    path = tmp_path / "run" / LAST / STATE_FILE
    raw = torch.load(path, map_location="cpu", weights_only=True)  # must not need pickle of arbitrary code
    state = run.load_trainer_state()
    assert raw.keys() == state.keys()
    assert state["step"] == 3
    assert state["epoch"] == 0 and state["window"] == 3
    assert state["tokens_seen"] == 3 * 2 * 8
    # optimizer state: moments for every parameter, and the learning rate groups
    optimizer = state["optimizer"]
    assert len(optimizer["state"]) == len(list(trainer.model.parameters()))
    assert {"exp_avg", "exp_avg_sq"} <= set(optimizer["state"][0])
    assert len(optimizer["param_groups"]) == 2
    # the RNG state is the one at the moment of the save (nothing drew numbers since)
    rng = state["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and rng["torch"].dtype == torch.uint8
    assert torch.equal(rng["torch"], torch.get_rng_state())
    assert rng["cuda"] is None  # a CPU run
    assert tuple(rng["numpy"]["keys"].tolist()) == tuple(np.random.get_state()[1].tolist())
    assert tuple(rng["python"]["state"]) == random.getstate()[1]
    # the carried (h, c) state, on the CPU: the task's part of the state (format 4)
    assert state["format"] == 4
    h, c = state["task"]["carried_state"]
    assert h.shape == c.shape == (2, 2, 16)
    assert torch.equal(h, trainer.state[0]) and torch.equal(c, trainer.state[1])
    assert state["best_val_loss"] == result.best_val_loss


class _Marker:
    """Unpickling this would create a file: a weights_only load must refuse it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_trainer_state_with_arbitrary_objects_is_refused(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    marker = tmp_path / "code-ran"
    run.save_checkpoint(LAST, build(config, 0), {"step": 1}, {"format": 1, "step": 1})
    torch.save({"format": 1, "payload": _Marker(str(marker))}, tmp_path / "run" / LAST / STATE_FILE)
    with pytest.raises(CharlmError, match="cannot be loaded safely"):
        run.load_trainer_state()
    assert not marker.exists()


def test_missing_or_truncated_trainer_state(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    with pytest.raises(CharlmError, match="no trainer state"):
        run.load_trainer_state()
    run.save_checkpoint(LAST, build(config, 0), {"step": 1})  # weights only
    with pytest.raises(CharlmError, match="no trainer state"):
        run.load_trainer_state()
    run.save_checkpoint(LAST, build(config, 0), {"step": 1}, {"format": 1, "weights": torch.randn(64, 64)})
    path = tmp_path / "run" / LAST / STATE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CharlmError, match="damaged"):
        run.load_trainer_state()


# ----- atomic swaps ---------------------------------------------------------------------

# what torch.save raises for a lambda (the exact type varies across Python versions)
UNPICKLABLE = (pickle.PicklingError, AttributeError, TypeError)


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    old, new = build(config, seed=1), build(config, seed=2)
    run.save_checkpoint(LAST, old, {"step": 5}, {"format": 1, "step": 5})
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / LAST).iterdir()}

    # a lambda cannot be pickled: torch.save fails after the weights were written
    with pytest.raises(UNPICKLABLE):
        run.save_checkpoint(LAST, new, {"step": 9}, {"format": 1, "step": 9, "hook": lambda: 0})

    after = {p.name: p.read_bytes() for p in (tmp_path / "run" / LAST).iterdir()}
    assert after == before
    loaded, which = run.load_model(LAST)
    assert which == LAST
    assert same_weights(loaded, old)
    assert not same_weights(loaded, new)
    assert run.checkpoint_metadata(LAST)["step"] == 5
    assert run.load_trainer_state()["step"] == 5
    assert hidden_entries(tmp_path / "run") == []
    assert not (tmp_path / "run" / f"{LAST}.old").exists()


def test_failed_first_save_leaves_nothing(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    with pytest.raises(UNPICKLABLE):
        run.save_checkpoint(BEST, build(config, 0), {"step": 1}, {"hook": lambda: 0})
    assert run.checkpoint_dir(BEST) is None
    assert not (tmp_path / "run" / BEST).exists()
    assert hidden_entries(tmp_path / "run") == []


def test_leftover_old_folder_is_still_found(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    old, new = build(config, seed=1), build(config, seed=2)
    run.save_checkpoint(LAST, old, {"step": 4}, {"format": 1, "step": 4})
    # a crash between the two renames: `last` was moved aside, the new one never arrived
    os.rename(tmp_path / "run" / LAST, tmp_path / "run" / f"{LAST}.old")

    assert run.checkpoint_dir(LAST) == tmp_path / "run" / f"{LAST}.old"
    loaded, which = run.load_model("auto")
    assert which == LAST
    assert same_weights(loaded, old)
    assert run.checkpoint_metadata(LAST)["step"] == 4
    assert run.load_trainer_state()["step"] == 4

    # the next save puts a proper `last` in place and clears the leftover
    run.save_checkpoint(LAST, new, {"step": 8}, {"format": 1, "step": 8})
    assert run.checkpoint_dir(LAST) == tmp_path / "run" / LAST
    assert not (tmp_path / "run" / f"{LAST}.old").exists()
    loaded, _ = run.load_model(LAST)
    assert same_weights(loaded, new)
    assert run.load_trainer_state()["step"] == 8
    assert hidden_entries(tmp_path / "run") == []


def test_completed_swap_prefers_new_folder_over_old(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    old, new = build(config, seed=1), build(config, seed=2)
    run.save_checkpoint(LAST, old, {"step": 1})
    os.rename(tmp_path / "run" / LAST, tmp_path / "run" / f"{LAST}.old")
    run.save_checkpoint(LAST, new, {"step": 2})
    assert run.checkpoint_dir(LAST) == tmp_path / "run" / LAST
    loaded, _ = run.load_model(LAST)
    assert same_weights(loaded, new)


# ----- RunDirectory.prepare -------------------------------------------------------------


def test_prepare_creates_missing_nested_folder(tmp_path):
    run = RunDirectory(tmp_path / "a" / "b" / "run")
    run.prepare()
    assert (tmp_path / "a" / "b" / "run").is_dir()
    assert not run.is_run()
    run.prepare()  # an empty folder may be used again


def test_prepare_refuses_non_empty_folder_that_is_not_a_run(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(CharlmError, match="not empty and is not a charlm run"):
        RunDirectory(folder).prepare()
    with pytest.raises(CharlmError, match="not empty and is not a charlm run"):
        RunDirectory(folder).prepare(overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"


def test_prepare_refuses_existing_run_without_overwrite(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    run.save_checkpoint(LAST, build(config, 0), {"step": 1})
    with pytest.raises(CharlmError) as info:
        RunDirectory(tmp_path / "run").prepare()
    message = str(info.value)
    assert "--resume" in message and "--overwrite" in message
    assert run.checkpoint_dir(LAST) is not None  # nothing was removed
    RunDirectory(tmp_path / "run").prepare(resume=True)  # resuming it is fine
    assert run.checkpoint_dir(LAST) is not None


def test_prepare_overwrite_removes_run_files_only(tmp_path):
    config = model_config()
    root = tmp_path / "run"
    run = new_run(root, config)
    run.save_checkpoint(LAST, build(config, 0), {"step": 1}, {"format": 1})
    run.save_checkpoint(BEST, build(config, 0), {"step": 1})
    run.append_metrics({"event": "start"})
    (root / "README.md").write_text("my notes")
    (root / "plots").mkdir()
    (root / "plots" / "loss.png").write_bytes(b"png")

    RunDirectory(root).prepare(overwrite=True)
    for name in (CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE, LAST, BEST):
        assert not (root / name).exists(), name
    assert not run.is_run()
    assert run.read_metrics() == []
    assert (root / "README.md").read_text() == "my notes"
    assert (root / "plots" / "loss.png").read_bytes() == b"png"


def test_prepare_overwrite_also_removes_leftover_old_checkpoint(tmp_path):
    # A `last.old` left by an interrupted swap belongs to the old run: after --overwrite the
    # new run must not find the old weights through it.
    config = model_config()
    root = tmp_path / "run"
    run = new_run(root, config)
    run.save_checkpoint(LAST, build(config, 0), {"step": 1}, {"format": 1})
    os.rename(root / LAST, root / f"{LAST}.old")

    RunDirectory(root).prepare(overwrite=True)
    assert run.checkpoint_dir(LAST) is None
    assert not (root / f"{LAST}.old").exists()


def test_prepare_resume_without_a_run(tmp_path):
    with pytest.raises(CharlmError, match="--resume"):
        RunDirectory(tmp_path / "missing").prepare(resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharlmError, match="holds no charlm run"):
        RunDirectory(tmp_path / "empty").prepare(resume=True)


def test_prepare_out_is_a_file(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("x")
    for kwargs in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(CharlmError, match="--out .* is a file"):
            RunDirectory(path).prepare(**kwargs)
    assert path.read_text() == "x"
    with pytest.raises(CharlmError, match="cannot create --out"):
        RunDirectory(path / "run").prepare()


# ----- damaged files --------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.0], ids=["half", "most", "one-byte"])
def test_truncated_weights_raise_charlm_error(tmp_path, keep):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    run.save_checkpoint(LAST, build(config, 0), {"step": 3})
    path = tmp_path / "run" / LAST / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(CharlmError, match="damaged"):
        run.load_model("auto")


def test_truncated_weights_metadata_raises_charlm_error(tmp_path):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    run.save_checkpoint(LAST, build(config, 0), {"step": 3})
    path = tmp_path / "run" / LAST / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CharlmError):
        run.checkpoint_metadata(LAST)


def test_weights_that_do_not_match_config(tmp_path):
    config = model_config(hidden=24)
    run = new_run(tmp_path / "run", config)
    run.save_checkpoint(LAST, build(config, 0), {"step": 3})
    run.write_config(RunConfig(model=model_config(hidden=32), train=TrainConfig(), tokenizer_kind="char"))
    with pytest.raises(CharlmError, match="does not match config.json"):
        run.load_model(LAST)


def _write_raw_config(run_dir: Path, text: str) -> None:
    (run_dir / CONFIG_FILE).write_text(text, encoding="utf-8")


def _valid_config_dict() -> dict:
    return RunConfig(model=model_config(), train=TrainConfig(max_steps=10), tokenizer_kind="char").to_dict()


def _mutated(change) -> str:
    data = _valid_config_dict()
    change(data)
    return json.dumps(data)


DAMAGED_CONFIGS = {
    "truncated": lambda: json.dumps(_valid_config_dict())[:40],
    "empty": lambda: "",
    "not-an-object": lambda: "[1, 2, 3]",
    "binary": lambda: "\x00\x01garbage",
    "missing-model": lambda: _mutated(lambda d: d.pop("model")),
    "model-not-a-dict": lambda: _mutated(lambda d: d.__setitem__("model", 5)),
    "vocab-as-text": lambda: _mutated(lambda d: d["model"].__setitem__("vocab_size", "thirteen")),
    "dropout-as-text": lambda: _mutated(lambda d: d["model"].__setitem__("dropout", "0.1")),
    "layers-fractional": lambda: _mutated(lambda d: d["model"].__setitem__("layers", 1.5)),
    "hidden-fractional": lambda: _mutated(lambda d: d["model"].__setitem__("hidden", 24.5)),
    "future-format": lambda: _mutated(lambda d: d.__setitem__("format_version", 2)),
    "format-not-a-number": lambda: _mutated(lambda d: d.__setitem__("format_version", "one")),
    "unknown-model-field": lambda: _mutated(lambda d: d["model"].__setitem__("attention", True)),
}


@pytest.mark.parametrize("kind", list(DAMAGED_CONFIGS))
def test_damaged_config_raises_charlm_error(tmp_path, kind):
    config = model_config()
    run = new_run(tmp_path / "run", config)
    run.save_checkpoint(LAST, build(config, 0), {"step": 3})
    _write_raw_config(tmp_path / "run", DAMAGED_CONFIGS[kind]())
    if kind not in ("layers-fractional", "hidden-fractional"):
        # damage visible in the JSON itself is reported when the config is read
        with pytest.raises(CharlmError):
            run.read_config()
    # and whatever the damage, building the model from it is a CharlmError, not a raw TypeError
    with pytest.raises(CharlmError):
        run.load_model("auto")


def test_read_config_of_missing_folder_or_file(tmp_path):
    with pytest.raises(CharlmError, match="does not exist"):
        RunDirectory(tmp_path / "nope").read_config()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharlmError, match="not a charlm run"):
        RunDirectory(tmp_path / "empty").read_config()


# ----- config JSON ----------------------------------------------------------------------


def test_run_config_round_trip_through_json(tmp_path):
    original = RunConfig(
        model=model_config(cell="rnn", layers=3, hidden=40, embed=20, dropout=0.25, tie_weights=True),
        train=TrainConfig(
            data="corpus.txt",
            val_fraction=0.05,
            batch_size=8,
            seq_len=32,
            lr=2e-3,
            max_time=12.5,
            epochs=None,
            max_steps=100,
            random_offset=False,
            threads=2,
            seed=7,
        ),
        tokenizer_kind="char",
        charlm_version="9.9.9",
        extra={"note": "x", "n": [1, 2]},
    )
    data = json.loads(json.dumps(original.to_dict()))
    restored = RunConfig.from_dict(data)
    assert restored == original
    assert restored.model.cell == "rnn-tanh"

    run = RunDirectory(tmp_path / "run")
    run.prepare()
    run.write_config(original)
    assert run.read_config() == original
    assert json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["model"]["hidden"] == 40
