"""The model for the budget: the sizing rule as a unit, the probe under a fake clock, and
`charlm train` choosing (and recording, and never re-deciding) what the user left open."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import invoke, read_config, read_events, word_text, write_text

from charlm.config import ModelShape, TrainConfig
from charlm.tasks.probe import MIN_TIMED_STEPS, ThroughputProbe
from charlm.tasks.sizing import (
    HIDDENS,
    LARGE_VOCABULARY_EMBED,
    MIN_STEPS,
    TOKENS_PER_PARAMETER,
    Limits,
    choose_size,
    recurrent_parameters,
)

CPU = torch.device("cpu")
RATE = 5e10  # a machine doing this many "parameter-tokens" per second (2x384 at ~27k tokens/s)


def flop_bound(shape: ModelShape, batch: int) -> float:
    """tokens/s of a machine whose cost per token is the recurrent parameters (fewer lanes: slower)."""
    return RATE / recurrent_parameters(shape) * (0.5 + batch / 64)


def limits(seconds=None, steps=None, epochs=None, train_tokens=10_000_000) -> Limits:
    return Limits(steps=steps, seconds=seconds, epochs=epochs, train_tokens=train_tokens, seq_len=128)


def widest_that_passes(seconds: float, batch: int = 32) -> int:
    passing = [h for h in HIDDENS if seconds * flop_bound(ModelShape(hidden=h), batch)
               >= TOKENS_PER_PARAMETER * recurrent_parameters(ModelShape(hidden=h))]  # fmt: skip
    return passing[-1] if passing else HIDDENS[0]


@pytest.mark.parametrize("seconds", [120, 300, 600, 3600])
def test_time_limited_runs_get_the_widest_model_that_sees_enough_tokens(seconds):
    choice = choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=seconds), 65, flop_bound)
    assert choice.shape.hidden == widest_that_passes(seconds)
    # the width is decided at 32 lanes; fewer lanes for more steps may then see a little less text
    at_32 = seconds * flop_bound(choice.shape, 32) / recurrent_parameters(choice.shape)
    assert at_32 >= TOKENS_PER_PARAMETER or choice.shape.hidden == HIDDENS[0]
    assert choice.tokens_per_parameter == pytest.approx(choice.tokens / recurrent_parameters(choice.shape))
    assert choice.decided == ["hidden", "embed", "tie_weights", "dropout_kind", "batch_size", "lr", "warmup_steps"]
    assert choice.shape.dropout_kind == "locked"


def test_more_time_or_a_faster_machine_never_gives_a_smaller_model():
    sizes = [choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=s), 65, flop_bound).shape.hidden
             for s in (30, 60, 120, 300, 600, 1200, 3600, 36000)]  # fmt: skip
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]

    def slow(shape, batch):
        return flop_bound(shape, batch) / 4

    assert choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=300), 65, slow).shape.hidden < sizes[3]


def test_a_step_or_epoch_limit_needs_no_probe():
    steps = choose_size(ModelShape(), TrainConfig(), set(), limits(steps=5000), 65, None)
    tokens = 5000 * 32 * 128
    assert steps.tokens == tokens and steps.batch_size == 32  # fewer lanes would only take tokens away
    assert TOKENS_PER_PARAMETER * recurrent_parameters(steps.shape) <= tokens
    epochs = choose_size(ModelShape(), TrainConfig(), set(), limits(epochs=2, train_tokens=3_000_000), 65, None)
    assert epochs.tokens == 6_000_000
    assert epochs.shape.hidden < steps.shape.hidden  # 6M tokens < 20.5M tokens


def test_the_users_options_win():
    train = TrainConfig(batch_size=12, lr=1e-3, warmup_steps=7)
    given = {"hidden", "batch_size", "lr", "warmup_steps", "embed", "tie_weights", "dropout_kind"}
    shape = ModelShape(hidden=200, embed=40)
    choice = choose_size(shape, train, given, limits(seconds=300), 5000, flop_bound)
    assert (choice.shape.hidden, choice.shape.embed, choice.shape.tie_weights) == (200, 40, False)
    assert choice.shape.dropout_kind == "standard"
    assert (choice.batch_size, choice.lr, choice.warmup_steps) == (12, 1e-3, 7)
    assert choice.decided == []
    layers = choose_size(ModelShape(layers=3, cell="gru"), TrainConfig(), {"layers", "cell"}, limits(seconds=300), 65,
                         flop_bound)  # fmt: skip
    assert (layers.shape.layers, layers.shape.cell) == (3, "gru")


def test_a_short_budget_takes_fewer_lanes_for_enough_steps_and_warms_up_briefly():
    choice = choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=20), 65, flop_bound)
    assert choice.batch_size < 32 and choice.lr < 6e-3
    assert 10 <= choice.warmup_steps <= max(10, choice.steps // 20)
    long = choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=3600), 65, flop_bound)
    assert long.batch_size == 32 and long.steps >= MIN_STEPS and long.warmup_steps == 100


def test_a_gpu_grows_the_batch_and_lanes_must_share_out():
    gpu = choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=3600), 65, lambda s, b: 50 * flop_bound(s, b),
                      on_gpu=True)  # fmt: skip
    assert gpu.batch_size > 32 and gpu.steps >= MIN_STEPS and gpu.lr <= 1e-2
    shared = choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=20), 65, flop_bound,
                         lane_ok=lambda b: b % 3 == 0)  # fmt: skip
    assert shared.batch_size % 3 == 0 or shared.batch_size == 32


def test_a_large_vocabulary_ties_the_output_layer_to_a_wider_embedding():
    choice = choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=300), 4500, flop_bound)
    assert choice.shape.tie_weights and choice.shape.embed == LARGE_VOCABULARY_EMBED
    small = choose_size(ModelShape(), TrainConfig(), set(), limits(seconds=300), 65, flop_bound)
    assert not small.shape.tie_weights and small.shape.embed == 64
    untied = choose_size(ModelShape(), TrainConfig(), {"tie_weights"}, limits(seconds=300), 4500, flop_bound)
    assert not untied.shape.tie_weights and untied.shape.embed == 64


class FakeClock:
    """Time that passes only when the probe asks, by how long its current candidate's step "takes"."""

    def __init__(self, seconds_per_token_per_width: float):
        self.now, self.rate, self.probe = 0.0, seconds_per_token_per_width, None

    def __call__(self) -> float:
        current = self.probe.current if self.probe is not None else None
        if current is not None:
            shape, batch = current
            self.now += self.rate * shape.hidden * batch * self.probe.window
        return self.now


def test_the_probe_measures_with_its_clock_and_keeps_its_answers():
    tokens = np.random.default_rng(0).integers(0, 30, 5000).astype(np.uint16)
    clock = FakeClock(1e-7)
    probe = ThroughputProbe(tokens, 30, TrainConfig(seq_len=16), CPU, "fp32", clock=clock, seconds_per_candidate=0.01)
    clock.probe = probe
    narrow, wide = probe(ModelShape(hidden=16, embed=8), 4), probe(ModelShape(hidden=64, embed=8), 4)
    # each timed step moves the clock by rate * H * B * T, so tokens/s is 1 / (rate * H) exactly
    assert narrow == pytest.approx(1 / (1e-7 * 16), rel=0.5) and wide == pytest.approx(narrow / 4, rel=0.5)
    assert probe.measured == {"2x16/4": narrow, "2x64/4": wide}
    spent = probe.seconds
    assert spent > 0
    assert probe(ModelShape(hidden=16, embed=8), 4) == narrow and probe.seconds == spent  # kept, not measured again
    assert probe.current is None


def test_the_probe_leaves_the_random_stream_alone_and_skips_what_does_not_fit():
    tokens = np.arange(3000, dtype=np.uint16) % 20
    probe = ThroughputProbe(tokens, 20, TrainConfig(seq_len=8), CPU, "fp32", seconds_per_candidate=0.0,
                            fits=lambda shape, batch: shape.hidden < 64)  # fmt: skip
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert probe(ModelShape(hidden=16, embed=8), 2) > 0
    assert torch.equal(torch.rand(3), expected)
    assert probe(ModelShape(hidden=64, embed=8), 2) == 0.0
    assert MIN_TIMED_STEPS >= 2


@pytest.fixture
def corpus(tmp_path):
    return write_text(tmp_path / "text.txt", word_text(30_000))


def test_charlm_train_chooses_records_and_reports(tmp_path, corpus):
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--max-time", "3", "--threads", "1",
                    "--sample-length", "0", "--eval-every", "100000")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "model for the budget:" in result.output and "why:" in result.output
    config = read_config(out)
    budget = config["extra"]["budget"]
    chosen = budget["chosen"]
    for name in ("hidden", "embed", "tie_weights", "dropout_kind"):
        assert config["model"][name] == chosen[name]
    for name in ("batch_size", "lr", "warmup_steps"):
        assert config["train"][name] == chosen[name]
    assert budget["measured_tokens_per_s"] and all(v > 0 for v in budget["measured_tokens_per_s"].values())
    assert chosen["hidden"] in HIDDENS
    events = read_events(out)
    # the probe's seconds count in the budget: the first checkpoint is already that far in
    start = next(e for e in events if e["event"] == "start")
    assert start["step"] == 0 and budget["probe_seconds"] > 0
    assert start["elapsed"] == pytest.approx(budget["probe_seconds"], abs=1e-3)
    assert next(e for e in events if e["event"] == "end")["elapsed"] >= 3.0

    # a resume never re-decides: same shape, same record, no new probe line
    again = invoke("train", "--out", str(out), "--resume", "--max-time", "4", "--threads", "1",
                   "--sample-length", "0")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "model for the budget" not in again.output
    assert read_config(out)["extra"]["budget"] == budget and read_config(out)["model"] == config["model"]


def test_given_options_are_kept_and_auto_size_can_be_turned_off(tmp_path, corpus):
    out = tmp_path / "given"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--max-steps", "2", "--threads", "1",
                    "--sample-length", "0", "--hidden", "48", "--batch-size", "4", "--lr", "0.002")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = read_config(out)
    assert (config["model"]["hidden"], config["train"]["batch_size"], config["train"]["lr"]) == (48, 4, 0.002)
    assert config["extra"]["budget"]["decided"] == ["embed", "tie_weights", "dropout_kind", "warmup_steps"]
    assert config["extra"]["budget"]["measured_tokens_per_s"] == {}  # a step limit needs no probe

    off = tmp_path / "off"
    result = invoke("train", "--data", str(corpus), "--out", str(off), "--max-steps", "1", "--threads", "1",
                    "--sample-length", "0", "--no-auto-size", "--hidden", "32")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "model for the budget" not in result.output
    assert "budget" not in read_config(off)["extra"] and read_config(off)["train"]["auto_size"] is False


def test_a_validation_split_of_unseen_characters_makes_a_new_run_train_on_bytes(tmp_path):
    train_text = word_text(6000)
    val_text = "Αυτό είναι ελληνικό κείμενο που δεν εμφανίζεται στην εκπαίδευση. " * 20
    corpus, val = write_text(tmp_path / "text.txt", train_text), write_text(tmp_path / "val.txt", val_text)
    common = ("--data", str(corpus), "--val-data", str(val), "--max-steps", "1", "--threads", "1",
              "--sample-length", "0", "--hidden", "16")  # fmt: skip
    result = invoke("train", *common, "--out", str(tmp_path / "auto"))
    assert result.exit_code == 0, result.output
    assert "training on UTF-8 bytes instead" in result.output
    assert read_config(tmp_path / "auto")["tokenizer_kind"] == "byte"
    kept = invoke("train", *common, "--out", str(tmp_path / "kept"), "--tokenizer", "char")
    assert kept.exit_code == 0, kept.output
    assert read_config(tmp_path / "kept")["tokenizer_kind"] == "char" and "bytes instead" not in kept.output
