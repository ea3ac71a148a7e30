"""Tests for the Trainer (engine + language-model task): the stateful truncated-BPTT training loop, end to end on the CPU.

Covers learning (a tiny LSTM overfits a repeated phrase and greedy generation continues it),
the carried recurrent state (detached between windows, kept within an epoch, reset at an
epoch boundary), exact resume (same weights and the same logged losses as an uninterrupted
run, with dropout and random window offsets), interrupting through should_stop and resuming,
the stop limits (max_steps, epochs, max_time), the events written to metrics.jsonl (start,
train, eval, checkpoint, end; loss / bpc / bpb / perplexity consistent; best checkpoint only
on improvement), the learning-rate schedule, seeding, bf16 autocast on a CPU that has it,
and the error raised when training diverges. Every run uses real files in tmp_path and
tiny models (hidden <= 64) in fp32, so results are deterministic.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    CPU,
    MODEL_DEFAULTS,
    TRAIN_DEFAULTS,
    make_corpus,
    new_trainer,
    of_kind,
    read_events,
    resumed_trainer,
    same_weights,
    word_text,
)

from charlm.config import ModelConfig, RunConfig, SampleConfig, TrainConfig
from charlm.errors import CharlmError
from charlm.hardware import cpu_supports_bf16
from charlm.inference.generate import Generator
from charlm.inference.scoring import DEFAULT_WINDOW, score_tokens
from charlm.models import state as states
from charlm.runs.directory import BEST, LAST, METRICS_FILE, RunDirectory
from charlm.tasks.language_model import Trainer
from charlm.text.tokenizer import context_token_id
from charlm.training.optim import learning_rate

# ----- helpers --------------------------------------------------------------------------


def unigram_entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log(c / n) for c in counts.values())


# ----- learning -------------------------------------------------------------------------


def test_tiny_lstm_overfits_a_repeated_phrase(tmp_path):
    text = "hello world, " * 200
    corpus = make_corpus(tmp_path, text)
    events: list[dict] = []
    trainer = new_trainer(
        tmp_path / "run", corpus,
        model=dict(cell="lstm", hidden=64, embed=32),
        train=dict(batch_size=4, seq_len=16, lr=1e-2, warmup_steps=10, max_steps=250, log_every=10, eval_every=125),
        events=events,
    )  # fmt: skip
    result = trainer.run()
    assert result.reason == "max_steps" and result.step == 250

    entropy = unigram_entropy(text)
    assert entropy > 2.0  # the phrase is not trivially predictable from letter counts alone
    losses = [e["loss"] for e in of_kind(events, "train")]
    assert losses[0] > 1.0
    assert losses[-1] < 0.3
    assert result.best_val_loss is not None and result.best_val_loss < 0.3

    model, which = trainer.run_dir.load_model("auto")
    assert which == BEST
    generator = Generator(model, trainer.run_dir.load_tokenizer())
    continuation = generator.generate("hello", max_tokens=20, config=SampleConfig(temperature=0.0), seed=0)
    assert continuation.text.startswith(" world, hello")


# ----- the carried state ----------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_is_detached_carried_within_epoch_and_reset_at_epoch_start(tmp_path, cell):
    corpus = make_corpus(tmp_path, word_text(400, seed=3), val_fraction=0.1)
    B, T = 2, 8
    trainer = new_trainer(
        tmp_path / "run", corpus,
        model=dict(cell=cell, layers=2, hidden=16, embed=8),
        train=dict(batch_size=B, seq_len=T, random_offset=False, max_steps=1, eval_every=1000),
    )  # fmt: skip
    windows = trainer.batcher.windows(0)
    assert windows >= 5
    trainer.config.max_steps = trainer.max_steps = windows + 3

    calls: list[tuple[Any, Any]] = []  # (state passed in, state returned) for each training forward

    def record(module, args, output):
        if module.training:
            state_in = args[1] if len(args) > 1 else None
            calls.append((state_in, tuple(t.detach().clone() for t in states.to_tensors(output[1]))))

    handle = trainer.model.register_forward_hook(record)
    try:
        result = trainer.run()
    finally:
        handle.remove()
    assert result.step == windows + 3
    assert len(calls) == windows + 3
    assert trainer.epoch == 1 and trainer.window == 3

    for index, (state_in, _) in enumerate(calls):
        if index in (0, windows):
            # the first window of each epoch starts from no state
            assert state_in is None, f"step {index + 1} should start from a reset state"
            continue
        assert state_in is not None, f"step {index + 1} lost the carried state"
        previous_out = calls[index - 1][1]
        for t, expected in zip(states.to_tensors(state_in), previous_out):
            assert t.grad_fn is None and not t.requires_grad
            assert t.dtype == torch.float32
            assert t.shape == (2, B, 16)
            assert torch.count_nonzero(t) > 0
            assert torch.equal(t, expected)  # the state the previous window left, unchanged

    assert trainer.state is not None
    for t in states.to_tensors(trainer.state):
        assert t.grad_fn is None and not t.requires_grad
        assert torch.count_nonzero(t) > 0


# ----- resume ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, cell):
    corpus = make_corpus(tmp_path, word_text(1600, seed=1), val_fraction=0.1)
    N = 20
    model = dict(cell=cell, layers=2, hidden=32, embed=16, dropout=0.3)
    # constant peak lr after warmup (min_lr_ratio 1) so the schedule does not depend on max_steps;
    # the warmup runs past N, so the resumed half must continue it from the saved step
    train = dict(
        batch_size=4, seq_len=12, lr=5e-3, min_lr_ratio=1.0, warmup_steps=N + 5, random_offset=True,
        eval_every=10, log_every=2, checkpoint_every=1000, seed=5,
    )  # fmt: skip

    events_a: list[dict] = []
    trainer_a = new_trainer(tmp_path / "a", corpus, model, {**train, "max_steps": 2 * N}, events=events_a)
    windows = trainer_a.batcher.windows(0)
    assert N < windows < 2 * N  # the run crosses an epoch boundary after the resume point
    result_a = trainer_a.run()
    assert result_a.step == 2 * N and trainer_a.epoch == 1

    first = new_trainer(tmp_path / "b", corpus, model, {**train, "max_steps": N})
    assert first.run().step == N

    events_b: list[dict] = []
    trainer_b = resumed_trainer(tmp_path / "b", corpus, events=events_b, max_steps=2 * N)
    assert trainer_b.step == N
    assert of_kind(events_b, "resume")[0]["step"] == N
    result_b = trainer_b.run()
    assert result_b.step == 2 * N and result_b.reason == "max_steps"

    assert same_weights(trainer_a.model, trainer_b.model)
    for a, b in zip(states.to_tensors(trainer_a.state), states.to_tensors(trainer_b.state)):
        assert torch.equal(a, b)
    assert result_a.best_val_loss == result_b.best_val_loss
    assert result_a.last_val_loss == result_b.last_val_loss

    def after_n(run_path: Path, kind: str) -> list[tuple]:
        return [
            (e["step"], e["loss"], e.get("lr")) for e in read_events(run_path) if e["event"] == kind and e["step"] > N
        ]

    train_a, train_b = after_n(tmp_path / "a", "train"), after_n(tmp_path / "b", "train")
    assert [s for s, _, _ in train_a] == list(range(N + 2, 2 * N + 1, 2))
    assert train_a == train_b
    assert after_n(tmp_path / "a", "eval") == after_n(tmp_path / "b", "eval")

    # and the saved last checkpoints agree too
    model_a, _ = RunDirectory(tmp_path / "a").load_model(LAST)
    model_b, _ = RunDirectory(tmp_path / "b").load_model(LAST)
    assert same_weights(model_a, model_b)


def test_interrupt_checkpoints_and_resume_continues(tmp_path):
    corpus = make_corpus(tmp_path, word_text(1200, seed=2), val_fraction=0.1)
    k, total = 13, 30
    model = dict(cell="lstm", layers=2, hidden=24, embed=12, dropout=0.2)
    # a cosine schedule over the same max_steps in both runs
    train = dict(max_steps=total, min_lr_ratio=0.1, warmup_steps=4, eval_every=10, log_every=1, lr=5e-3)

    reference = new_trainer(tmp_path / "ref", corpus, model, train)
    reference.run()

    holder: dict[str, Trainer] = {}
    events: list[dict] = []
    holder["t"] = new_trainer(
        tmp_path / "run", corpus, model, train, events=events, should_stop=lambda: holder["t"].step >= k
    )
    result = holder["t"].run()
    assert result.reason == "interrupted"
    assert result.step == k

    run = RunDirectory(tmp_path / "run")
    assert run.checkpoint_metadata(LAST)["step"] == k
    assert run.load_trainer_state()["step"] == k
    checkpoints = of_kind(events, "checkpoint")
    assert checkpoints[-1] == {"event": "checkpoint", "step": k, "which": [LAST]}
    assert [e["step"] for e in of_kind(events, "eval")] == [10]  # no extra evaluation on interrupt
    end = of_kind(events, "end")[0]
    assert end["reason"] == "interrupted" and end["step"] == k
    assert max(e["step"] for e in of_kind(events, "train")) == k

    resumed = resumed_trainer(tmp_path / "run", corpus)
    assert resumed.step == k
    final = resumed.run()
    assert final.reason == "max_steps" and final.step == total
    assert same_weights(resumed.model, reference.model)


# ----- stop limits ----------------------------------------------------------------------


def test_max_steps_stops_at_exactly_that_step(tmp_path):
    corpus = make_corpus(tmp_path, word_text(800))
    events: list[dict] = []
    trainer = new_trainer(tmp_path / "run", corpus, train=dict(max_steps=7, log_every=3, eval_every=5), events=events)
    result = trainer.run()
    assert result.reason == "max_steps"
    assert result.step == trainer.step == 7
    assert [e["step"] for e in of_kind(events, "train")] == [3, 6]
    # evaluated at 5 and once more at the stop, with a checkpoint each time
    assert [e["step"] for e in of_kind(events, "eval")] == [5, 7]
    # a fresh run checkpoints at step 0 too (something to roll back to, or resume after an early crash)
    assert [e["step"] for e in of_kind(events, "checkpoint")] == [0, 5, 7]
    assert RunDirectory(tmp_path / "run").checkpoint_metadata(LAST)["step"] == 7
    end = of_kind(events, "end")[0]
    assert end["step"] == 7 and end["reason"] == "max_steps"


@pytest.mark.parametrize("epochs", [1.0, 0.5])
def test_epochs_stops_at_the_epoch_fraction(tmp_path, epochs):
    corpus = make_corpus(tmp_path, word_text(600))
    events: list[dict] = []
    trainer = new_trainer(
        tmp_path / "run",
        corpus,
        train=dict(max_steps=None, epochs=epochs, log_every=1, batch_size=2, seq_len=10),
        events=events,
    )
    windows = trainer.batcher.windows(0)
    assert windows > 4
    result = trainer.run()
    assert result.reason == "epochs"
    assert result.step == math.ceil(windows * epochs)
    assert trainer.epoch == 0  # never started the second epoch
    assert trainer.epoch_progress() == pytest.approx(math.ceil(windows * epochs) / windows)
    last_train = of_kind(events, "train")[-1]
    assert last_train["epoch"] == pytest.approx(trainer.epoch_progress(), abs=1e-4)
    if epochs == 1.0:
        assert last_train["epoch"] == 1.0
        assert last_train["progress"] == 1.0


def test_max_time_stops_with_reason_max_time(tmp_path):
    corpus = make_corpus(tmp_path, word_text(800))
    events: list[dict] = []
    trainer = new_trainer(
        tmp_path / "run", corpus, train=dict(max_steps=None, max_time=0.05, log_every=1), events=events
    )
    result = trainer.run()
    assert result.reason == "max_time"
    assert result.step >= 1
    assert result.elapsed >= 0.05
    trains = of_kind(events, "train")
    assert trains[-1]["step"] == result.step
    assert trains[-1]["elapsed"] >= 0.05 - 1e-3
    # progress follows the time budget, so the schedule ends with it
    assert trains[-1]["progress"] == 1.0
    assert all(0.0 <= e["progress"] <= 1.0 for e in trains)
    assert RunDirectory(tmp_path / "run").checkpoint_metadata(LAST)["step"] == result.step
    assert of_kind(events, "end")[0]["reason"] == "max_time"


# ----- events ---------------------------------------------------------------------------


def test_events_in_metrics_file_are_consistent(tmp_path):
    # accented letters: 2 UTF-8 bytes per character, so bits per byte differs from bits per char
    text = word_text(1500, seed=4, extra=("café", "naïve", "résumé"))
    corpus = make_corpus(tmp_path, text, val_fraction=0.2)
    events: list[dict] = []
    max_steps = 12
    trainer = new_trainer(
        tmp_path / "run", corpus,
        train=dict(max_steps=max_steps, eval_every=4, log_every=2, checkpoint_every=6, warmup_steps=3, lr=5e-3),
        events=events,
    )  # fmt: skip
    result = trainer.run()
    run_path = tmp_path / "run"

    lines = (run_path / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and isinstance(r["time"], float) for r in records)
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == events
    kinds = [r["event"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert {"start", "train", "eval", "checkpoint", "end"} == set(kinds)

    start = records[0]
    assert start["step"] == 0 and start["max_steps"] == max_steps
    assert start["parameters"] == trainer.model.num_parameters()
    assert start["train_tokens"] == len(corpus.splits["train"])
    assert start["val_tokens"] == len(corpus.splits["val"])

    trains = of_kind(records, "train")
    assert [e["step"] for e in trains] == [2, 4, 6, 8, 10, 12]
    for e in trains:
        assert math.isfinite(e["loss"]) and e["loss"] > 0
        # the lr logged is the one the step used
        expected_lr = learning_rate(trainer.config, e["step"] - 1, (e["step"] - 1) / max_steps)
        assert e["lr"] == pytest.approx(expected_lr, rel=1e-12)

    evals = of_kind(records, "eval")
    assert [e["step"] for e in evals] == [4, 8, 12]
    val_tokens = len(corpus.splits["val"])
    assert corpus.chars["val"] == val_tokens  # char tokenizer: one token per character
    assert corpus.bytes["val"] > corpus.chars["val"]
    for e in evals:
        assert e["split"] == "val"
        assert e["perplexity"] == pytest.approx(math.exp(e["loss"]), rel=1e-9)
        assert e["bpc"] == pytest.approx(e["loss"] / math.log(2), rel=1e-9)
        assert e["bpb"] == pytest.approx(e["loss"] * val_tokens / corpus.bytes["val"] / math.log(2), rel=1e-9)
        assert e["bpb"] < e["bpc"]

    # checkpoints: after every eval (last, plus best when it improved) and at checkpoint_every
    checkpoints = of_kind(records, "checkpoint")
    assert [e["step"] for e in checkpoints] == [0, 4, 6, 8, 12]
    by_step = {e["step"]: e["which"] for e in checkpoints}
    assert by_step[0] == by_step[6] == [LAST]
    for e in evals:
        assert (BEST in by_step[e["step"]]) == e["best"]
        assert LAST in by_step[e["step"]]

    end = records[-1]
    assert end["reason"] == "max_steps" and end["step"] == max_steps
    assert end["best_val_loss"] == min(e["loss"] for e in evals) == result.best_val_loss
    assert end["last_val_loss"] == evals[-1]["loss"]

    # the eval loss is what score_tokens() gives for the saved weights
    model, _ = RunDirectory(run_path).load_model(LAST)
    again = score_tokens(
        model, corpus.splits["val"], context_token_id(corpus.tokenizer), trainer.config.eval_batch_size, DEFAULT_WINDOW
    )
    assert again.loss == pytest.approx(evals[-1]["loss"], rel=1e-6)


def test_best_checkpoint_only_moves_when_validation_improves(tmp_path):
    # Train on one cycle (a->b->c) and validate on the reverse (a->c->b): once the model has
    # learned the letter frequencies, learning its training text only makes validation worse,
    # so the later evaluations do not improve and must not move the best checkpoint.
    corpus = make_corpus(tmp_path, "abc" * 400, val_text="acb" * 100)
    events: list[dict] = []
    trainer = new_trainer(
        tmp_path / "run", corpus,
        model=dict(cell="gru", hidden=16, embed=8),
        train=dict(max_steps=40, eval_every=5, log_every=5, lr=1e-2, warmup_steps=1),
        events=events,
    )  # fmt: skip
    result = trainer.run()
    evals = of_kind(events, "eval")
    losses = [e["loss"] for e in evals]
    assert len(evals) == 8

    running_best = math.inf
    for e in evals:
        assert e["best"] == (e["loss"] < running_best)
        running_best = min(running_best, e["loss"])
    flags = [e["best"] for e in evals]
    assert flags[0] is True
    assert not all(flags)  # the scenario really has evaluations that did not improve
    assert losses[-1] > losses[0]

    run = RunDirectory(tmp_path / "run")
    best_step = evals[losses.index(min(losses))]["step"]
    assert run.checkpoint_metadata(BEST)["step"] == best_step
    assert run.checkpoint_metadata(LAST)["step"] == 40
    best_model, _ = run.load_model(BEST)
    last_model, _ = run.load_model(LAST)
    assert not same_weights(best_model, last_model)
    again = score_tokens(
        best_model,
        corpus.splits["val"],
        context_token_id(corpus.tokenizer),
        trainer.config.eval_batch_size,
        DEFAULT_WINDOW,
    )
    assert again.loss == pytest.approx(result.best_val_loss, rel=1e-6)
    for e in of_kind(events, "checkpoint"):
        assert (BEST in e["which"]) == (e["step"] in [v["step"] for v in evals if v["best"]])


# ----- learning rate --------------------------------------------------------------------


def test_learning_rate_warmup_peak_and_decay():
    config = TrainConfig(lr=1e-2, warmup_steps=10, min_lr_ratio=0.1)
    warm = [learning_rate(config, step, 0.0) for step in range(10)]
    # linear ramp: (step + 1) / warmup of the peak
    for step, value in enumerate(warm):
        assert value == pytest.approx(1e-2 * (step + 1) / 10)
    diffs = [b - a for a, b in zip(warm, warm[1:])]
    assert all(d == pytest.approx(1e-3) for d in diffs)
    assert warm[-1] == pytest.approx(1e-2)  # reaches the peak at the end of warmup
    assert learning_rate(config, 50, 0.0) == pytest.approx(1e-2)  # and stays there at progress 0

    # cosine decay with progress, to lr * min_lr_ratio at progress 1
    assert learning_rate(config, 100, 0.5) == pytest.approx((1e-2 + 1e-3) / 2)
    assert learning_rate(config, 100, 1.0) == pytest.approx(1e-3)
    assert learning_rate(config, 100, 1.7) == pytest.approx(1e-3)  # clamped
    decay = [learning_rate(config, 100, p / 20) for p in range(21)]
    assert all(b <= a for a, b in zip(decay, decay[1:]))


def test_learning_rate_without_warmup_or_decay():
    assert learning_rate(TrainConfig(lr=3e-3, warmup_steps=0), 0, 0.0) == pytest.approx(3e-3)
    flat = TrainConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0)
    assert all(learning_rate(flat, s, s / 10) == pytest.approx(3e-3) for s in range(11))
    to_zero = TrainConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert learning_rate(to_zero, 5, 1.0) == pytest.approx(0.0, abs=1e-15)


# ----- seeding, precision, divergence ---------------------------------------------------


def test_same_seed_gives_the_same_run(tmp_path):
    # TrainConfig.seed (--seed) should make a run reproducible whatever the global RNG held
    corpus = make_corpus(tmp_path, word_text(800))
    mc = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **{**MODEL_DEFAULTS, "layers": 2, "dropout": 0.2})
    initial, trained = [], []
    for index, global_seed in enumerate((11, 22)):
        tc = TrainConfig(**{**TRAIN_DEFAULTS, "max_steps": 5, "seed": 42})
        run = RunDirectory(tmp_path / f"run{index}")
        run.prepare()
        run.write_config(RunConfig(model=mc, train=tc, tokenizer_kind="char"))
        torch.manual_seed(global_seed)  # whatever the caller did before
        trainer = Trainer(mc, tc, corpus, run, CPU, "fp32")
        initial.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        trainer.run()
        trained.append(trainer.model.state_dict())
    differ_initial = [name for name in initial[0] if not torch.equal(initial[0][name], initial[1][name])]
    assert differ_initial == [], "same --seed, different initial weights"
    differ_trained = [name for name in trained[0] if not torch.equal(trained[0][name], trained[1][name])]
    assert differ_trained == [], "same --seed, different trained weights"


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_bf16_autocast_trains_with_finite_loss(tmp_path):
    corpus = make_corpus(tmp_path, word_text(800))
    events: list[dict] = []
    trainer = new_trainer(
        tmp_path / "run", corpus, model=dict(cell="lstm", layers=2), precision="bf16",
        train=dict(max_steps=6, eval_every=6), events=events,
    )  # fmt: skip
    result = trainer.run()
    assert result.step == 6
    losses = [e["loss"] for e in of_kind(events, "train")]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.last_val_loss)
    for t in states.to_tensors(trainer.state):
        assert t.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32


def diverging_trainer(tmp_path: Path, events: list, **guard: Any) -> Trainer:
    """A ReLU RNN at lr 1e6 without clipping: every step after the first blows up."""
    corpus = make_corpus(tmp_path, word_text(800))
    return new_trainer(tmp_path / "run", corpus, model=dict(cell="rnn-relu", hidden=32), events=events,
                       train=dict(lr=1e6, grad_clip=0.0, warmup_steps=0, max_steps=50, log_every=1, **guard))  # fmt: skip


def test_a_run_that_keeps_diverging_gives_up_after_its_rollbacks(tmp_path):
    events: list[dict] = []
    trainer = diverging_trainer(tmp_path, events, skip_limit=3, max_rollbacks=2)
    with pytest.raises(CharlmError, match="--lr") as info:
        trainer.run()
    message = str(info.value)
    assert "diverged" in message and "2 rollback(s)" in message and "--resume --lr" in message
    # each bad step was skipped, three in a row rolled back with half the learning rate
    rollbacks = of_kind(events, "rollback")
    assert [e["lr_scale"] for e in rollbacks] == [0.5, 0.25]
    assert all(e["to_step"] == 0 for e in rollbacks)
    bad = of_kind(events, "bad_step")
    assert [e["action"] for e in bad[:3]] == ["skip", "skip", "rollback"]
    assert all(e["loss"] in ("nan", "inf") or not math.isfinite(float(e["loss"])) or e["grad_norm"] in ("nan", "inf")
               for e in bad)  # fmt: skip
    # what is on disk is the last good checkpoint, with finite weights
    model, _ = RunDirectory(tmp_path / "run").load_model(LAST)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert RunDirectory(tmp_path / "run").load_trainer_state()["step"] == 0


def test_on_divergence_stop_gives_up_at_the_first_bad_step(tmp_path):
    events: list[dict] = []
    trainer = diverging_trainer(tmp_path, events, on_divergence="stop")
    with pytest.raises(CharlmError, match="--on-divergence stop"):
        trainer.run()
    bad = of_kind(events, "bad_step")
    assert len(bad) == 1 and bad[0]["action"] == "stop"
    assert trainer.step == bad[0]["step"] < 50
    assert not of_kind(events, "rollback")


def test_tokens_per_second_after_a_resume_counts_only_the_steps_this_session_timed(tmp_path, monkeypatch):
    """The log accumulators come back from the checkpoint (steps 11-15 of the interval to 20),
    but the clock of those steps does not: the first rate after a resume must not count them."""
    import charlm.training.position as loop_module

    clock = iter(float(i) for i in range(10**6))  # every reading of the clock is one second later
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: next(clock))
    corpus = make_corpus(tmp_path, word_text(3000))
    events: list = []
    new_trainer(tmp_path / "run", corpus, train=dict(max_steps=15, log_every=10), events=events).run()
    resumed_trainer(tmp_path / "run", corpus, events=events, max_steps=30).run()
    B, T = TRAIN_DEFAULTS["batch_size"], TRAIN_DEFAULTS["seq_len"]
    rates = [(e["step"], e["tokens_per_s"]) for e in of_kind(events, "train")]
    assert rates == [(10, B * T), (20, B * T), (30, B * T)]  # one step a second, every interval
