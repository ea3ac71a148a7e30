"""The GPU-minded code paths, exercised on the CPU: mixed precision, the sync-free step, compile.

* bf16 and fp16 autocast train for real where torch runs them on this CPU (a one-step probe
  decides, as the CLI's does); the carried state, the weights and AdamW's moments stay
  fp32 across steps; fp16 goes through the GradScaler, whose state is checkpointed.
* A cell torch cannot run in a precision here is refused with one line, before training.
* A bad step is skipped on the device: fused AdamW's found_inf leaves weights, moments and
  the step count bit for bit, with no host read in between.
* Reading the guard's records back every k steps (what a GPU does) trains exactly like
  reading them every step (what the CPU does), bad steps included; rollbacks still happen.
* --compile trains and saves weights under their plain names.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import (
    child_env,
    make_corpus,
    new_trainer,
    of_kind,
    read_events,
    resumed_trainer,
    same_weights,
    word_text,
    write_text,
)

from charlm.errors import CharlmError
from charlm.training.faults import FaultPlan
from charlm.training.preflight import check_precision_runs

CPU = torch.device("cpu")


def runs_here(cell: str, precision: str) -> bool:
    try:
        check_precision_runs(cell, CPU, precision)
    except CharlmError:
        return False
    return True


@pytest.mark.parametrize(
    "cell, precision",
    [("lstm", "bf16"), ("gru", "bf16"), ("rnn-tanh", "fp16"), ("gru", "fp16"), ("lstm", "fp16")],
)
def test_mixed_precision_trains_and_keeps_fp32_state(tmp_path, cell, precision):
    if not runs_here(cell, precision):
        pytest.skip(
            f"torch {torch.__version__} cannot run a {cell} cell in {precision} on this CPU (refusal tested below)"
        )
    corpus = make_corpus(tmp_path, word_text(6000))
    events: list = []
    trainer = new_trainer(tmp_path / "run", corpus, model=dict(cell=cell, layers=2), precision=precision,
                          train=dict(max_steps=40, log_every=10, lr=1e-2), events=events)  # fmt: skip
    trainer.run()
    state = trainer.state if isinstance(trainer.state, tuple) else (trainer.state,)
    assert all(s.dtype == torch.float32 for s in state), [s.dtype for s in state]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    moments = [v for st in trainer.optimizer.state.values() for k, v in st.items() if k.startswith("exp_avg")]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    losses = [e["loss"] for e in of_kind(events, "train")]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0] - 0.15, losses
    saved = trainer.run_dir.load_trainer_state()
    assert (saved["scaler"] is not None) == (precision == "fp16")  # the GradScaler's scale is part of a resume
    assert of_kind(events, "start")[0]["precision"] == precision


@pytest.mark.slow
def test_a_precision_torch_cannot_run_here_is_refused_in_one_line(tmp_path):
    refused = [(c, p) for c in ("lstm", "gru", "rnn-tanh") for p in ("fp16", "bf16") if not runs_here(c, p)]
    if not refused:
        pytest.skip("torch runs every cell in fp16 and bf16 on this CPU: nothing to refuse")
    cell, precision = refused[0]
    corpus = write_text(tmp_path / "c.txt", word_text(5000))
    done = subprocess.run(
        [sys.executable, "-m", "charlm", "train", "--data", str(corpus), "--out", str(tmp_path / "run"), "--device", "cpu",
         "--cell", cell, "--precision", precision, "--max-steps", "2", "--sample-length", "0"],
        env=child_env(tmp_path / "data"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"torch cannot run a {cell} cell in {precision} on this CPU; use --precision" in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_bad_step_is_skipped_on_the_device_without_touching_weights_or_moments(tmp_path):
    """Three steps whose third is bad end with the weights, AdamW moments and step counts of
    two good steps, bit for bit (a constant learning rate, so the budget does not matter)."""
    corpus = make_corpus(tmp_path, word_text(3000))
    constant = dict(min_lr_ratio=1.0, warmup_steps=1)
    two = new_trainer(tmp_path / "two", corpus, train=dict(max_steps=2, **constant))
    assert two.optimizer.defaults.get("fused"), (
        "this torch has fused AdamW on the CPU: the device-side skip is what runs on a GPU"
    )
    two.run()
    events: list = []
    three = new_trainer(tmp_path / "three", corpus, train=dict(max_steps=3, **constant), events=events,
                        faults=FaultPlan("nan-loss@3"))  # fmt: skip
    three.run()  # steps 1 and 2 good; step 3 judged bad on the device and its update skipped
    assert three.skipped_steps == 1 and [e["action"] for e in of_kind(events, "bad_step")] == ["skip"]
    assert same_weights(two.model, three.model)
    moments, expected = three.optimizer.state_dict()["state"], two.optimizer.state_dict()["state"]
    assert moments.keys() == expected.keys()
    for index, state in moments.items():
        assert state.keys() == expected[index].keys()
        assert all(torch.equal(value, expected[index][key]) for key, value in state.items())  # moments, step
    assert all(not t.any() for t in three.state)  # the state of a bad step is not carried on: zeros


def _train_with(tmp_path, name, corpus, check_every, faults, **train):
    events: list = []
    trainer = new_trainer(tmp_path / name, corpus, model=dict(dropout=0.1), events=events,
                          train=dict(max_steps=60, log_every=5, eval_every=20, checkpoint_every=10, **train),
                          faults=FaultPlan(faults), check_every=check_every)  # fmt: skip
    trainer.run()
    return trainer, read_events(tmp_path / name)


def _without_timing(events: list[dict]) -> list[dict]:
    drop = {"time", "tokens_per_s", "elapsed", "progress", "seconds"}
    return [{k: v for k, v in e.items() if k not in drop} for e in events]


def test_reading_records_back_every_k_steps_trains_exactly_like_every_step(tmp_path):
    corpus = make_corpus(tmp_path, word_text(6000))
    every, batched = (
        _train_with(tmp_path, name, corpus, k, "nan-loss@12,nan-loss@33") for name, k in (("one", 1), ("k", 7))
    )
    assert same_weights(every[0].model, batched[0].model)
    assert every[0].skipped_steps == batched[0].skipped_steps == 2
    assert _without_timing(every[1]) == _without_timing(batched[1])
    assert [e["step"] for e in of_kind(batched[1], "bad_step")] == [12, 33]


def test_a_rollback_still_happens_when_records_are_read_back_late(tmp_path):
    corpus = make_corpus(tmp_path, word_text(6000))
    trainer, events = _train_with(tmp_path, "late", corpus, 9, "nan-weights@25", skip_limit=3)
    rollbacks = of_kind(events, "rollback")
    assert len(rollbacks) == 1 and rollbacks[0]["to_step"] == 20
    assert of_kind(events, "end")[0]["step"] == 60
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.slow
def test_compile_trains_and_saves_plain_weight_names(tmp_path):
    corpus = write_text(tmp_path / "c.txt", word_text(8000))
    common = [sys.executable, "-m", "charlm", "train", "--data", str(corpus), "--hidden", "32", "--embed", "16",
              "--batch-size", "4", "--seq-len", "16", "--threads", "1", "--precision", "fp32", "--dropout", "0",
              "--max-steps", "10", "--log-every", "10", "--sample-length", "20", "--device", "cpu"]  # fmt: skip
    env = child_env(tmp_path / "data")
    eager = subprocess.run(
        common + ["--out", str(tmp_path / "eager")], env=env, capture_output=True, text=True, timeout=300
    )
    assert eager.returncode == 0, eager.stderr
    compiled = subprocess.run(common + ["--out", str(tmp_path / "compiled"), "--compile"], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    assert "compiled);" in compiled.stderr
    start = of_kind(read_events(tmp_path / "compiled"), "start")[0]
    assert start["compile"] is True
    # the same training, up to the float rounding of generated kernels
    loss = lambda run: of_kind(read_events(tmp_path / run), "train")[0]["loss"]  # noqa: E731
    assert abs(loss("compiled") - loss("eager")) < 1e-3
    from charlm.runs.directory import LAST, RunDirectory

    model, _ = RunDirectory(tmp_path / "compiled").load_model(LAST)  # plain names: strict load works
    assert not any("_orig_mod" in name or "module." in name for name in model.state_dict())


def test_a_checkpoint_holding_a_gpu_rng_state_resumes_exactly_on_the_cpu(tmp_path):
    """A run checkpointed on a GPU carries its CUDA generator's state; on a CPU that state is
    ignored and everything else resumes as usual, bit for bit."""

    from charlm.runs.directory import LAST, STATE_FILE

    corpus = make_corpus(tmp_path, word_text(3000))
    train = dict(max_steps=20, log_every=5, min_lr_ratio=1.0, warmup_steps=1)
    model = dict(dropout=0.2)
    reference = new_trainer(tmp_path / "reference", corpus, model=model, train=train)
    reference.run()

    new_trainer(tmp_path / "gpu", corpus, model=model, train={**train, "max_steps": 10}).run()
    state_path = tmp_path / "gpu" / LAST / STATE_FILE
    saved = torch.load(state_path, weights_only=True)
    assert saved["rng"]["cuda"] is None  # written on the CPU; make it look like a GPU's
    saved["rng"]["cuda"] = [torch.randint(0, 255, (16,), dtype=torch.uint8)]
    torch.save(saved, state_path)
    resumed = resumed_trainer(tmp_path / "gpu", corpus, max_steps=20)
    resumed.run()
    assert same_weights(resumed.model, reference.model)
