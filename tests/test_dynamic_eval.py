"""Dynamic evaluation: charlm.inference.dynamic, Scorer.score_dynamic and `charlm perplexity --dynamic`.

Covered here:
  * the same predictions as static scoring: with lr 0 (and with decay 1, which undoes every
    step) the dynamic total equals score_tokens' to float rounding, for one lane, several lanes
    with a tail, and any adaptation window; tokens, lanes and context resets are the same;
  * each window is scored before the model learns from it: a text of one window scores the
    same with any learning rate;
  * it adapts: on a short random string repeated many times, a barely trained model scores
    far better dynamically than statically, with either step rule;
  * nothing is changed: the Scorer's model keeps its weights bit for bit, and the run
    directory's files keep their bytes and modification times, through the API and the CLI;
  * the CLI: both figures side by side with their labels, --json with a "static" and a
    "dynamic" object (matching the API), and one-line errors for bad settings, --per-line with
    --dynamic, and a --dynamic-* option without --dynamic;
  * bench/dynamic_eval.py runs and writes its JSON (slow: a subprocess).

A one-layer LSTM (hidden 32) trained for 15 steps; the CLI runs in this process (CliRunner).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, assert_user_error, invoke, snapshot, train_tiny_run, word_text

from charlm.errors import OptionError
from charlm.inference.dynamic import DynamicSettings, score_tokens_dynamic
from charlm.inference.scorer import Scorer
from charlm.inference.scoring import score_tokens

# what the model under test has seen (and so what its vocabulary holds)
LETTERS = sorted(set("".join(word_text(4000, seed=3))))
# adapts quickly: what the repeated-text test uses
FAST = DynamicSettings(lr=3e-3, decay=0.0, window=16, step="rms")


def repeated_text(unit_chars: int = 40, times: int = 50, seed: int = 0) -> str:
    """A random string of the run's letters, repeated: easy to learn from the text itself."""
    rng = random.Random(seed)
    return "".join(rng.choice(LETTERS) for _ in range(unit_chars)) * times


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A barely trained char LSTM: 15 steps on word text, validated with 4 lanes."""
    root = tmp_path_factory.mktemp("dynamic")
    return train_tiny_run(root, word_text(8000, seed=3), max_steps=15, eval_batch_size=4, eval_every=1000)


@pytest.fixture(scope="module")
def scorer(run) -> Scorer:
    return Scorer(run)


@pytest.fixture(scope="module")
def ids(scorer) -> np.ndarray:
    return scorer.tokenizer.encode(word_text(1_505, seed=7))  # with 3 lanes of 501: a tail of 2


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------
# the same predictions as static scoring


@pytest.mark.parametrize("lanes, window", [(1, 32), (3, 7), (3, 600)])
def test_lr_zero_gives_the_static_total(scorer, ids, lanes, window):
    model, ctx = scorer.model, scorer.context_id
    static = score_tokens(model, ids, ctx, lanes=lanes, min_lane_tokens=100)
    dynamic = score_tokens_dynamic(model, ids, ctx, DynamicSettings(lr=0.0, window=window), lanes, min_lane_tokens=100)
    assert (dynamic.tokens, dynamic.lanes, dynamic.context_resets) == (len(ids), lanes, lanes - 1)
    assert (static.tokens, static.lanes, static.context_resets) == (
        dynamic.tokens,
        dynamic.lanes,
        dynamic.context_resets,
    )
    assert dynamic.nll == pytest.approx(static.nll, rel=1e-6)


@pytest.mark.parametrize("step", ["rms", "sgd"])
def test_decay_one_undoes_every_step(scorer, ids, step):
    """decay 1 puts the weights back to the trained ones after each step: nothing carries over."""
    model, ctx = scorer.model, scorer.context_id
    static = score_tokens(model, ids, ctx, lanes=3, min_lane_tokens=100)
    settings = DynamicSettings(lr=1.0 if step == "sgd" else 1e-2, decay=1.0, window=16, step=step)
    assert score_tokens_dynamic(model, ids, ctx, settings, 3, min_lane_tokens=100).nll == pytest.approx(
        static.nll, rel=1e-6
    )


def test_a_window_is_scored_before_the_model_learns_from_it(scorer, ids):
    model, ctx = scorer.model, scorer.context_id
    one_window = ids[:50]
    static = score_tokens(model, one_window, ctx, lanes=1)
    dynamic = score_tokens_dynamic(model, one_window, ctx, DynamicSettings(lr=10.0, window=64, step="sgd"), 1)
    assert dynamic.nll == pytest.approx(static.nll, rel=1e-6)
    # two windows: the second is scored after a step, so the total differs
    two = score_tokens_dynamic(model, one_window, ctx, DynamicSettings(lr=10.0, window=25, step="sgd"), 1)
    assert two.nll != pytest.approx(static.nll, rel=1e-3)


def test_score_dynamic_with_lr_zero_equals_the_static_split(scorer):
    compared = scorer.score_dynamic(settings=DynamicSettings(lr=0.0), split="val")
    split, static = scorer.score_split("val")
    assert compared.label == split == "val"
    assert compared.static.nll == static.nll
    assert compared.dynamic.nll == pytest.approx(static.nll, rel=1e-6)
    assert compared.dynamic.to_dict().keys() == static.to_dict().keys()
    for key in ("tokens", "chars", "bytes", "words", "unknown", "lanes", "context_resets"):
        assert getattr(compared.dynamic, key) == getattr(static, key), key
    assert abs(compared.gain) < 1e-6


# ---------------------------------------------------------------------------------------
# it adapts


@pytest.mark.parametrize("settings", [FAST, DynamicSettings(lr=1.0, decay=0.0, window=16, step="sgd")])
def test_dynamic_is_far_better_on_a_text_that_repeats(scorer, settings):
    text = repeated_text()
    compared = scorer.score_dynamic(text, settings)
    assert compared.static.loss > 2.0  # the model has never seen this string
    assert compared.gain > 0.5, (compared.static.loss, compared.dynamic.loss)
    assert compared.dynamic.tokens == compared.static.tokens == len(text)


def test_default_settings_gain_on_a_text_that_repeats(scorer):
    compared = scorer.score_dynamic(repeated_text(times=100))
    assert compared.gain > 0.1, (compared.static.loss, compared.dynamic.loss)


def test_more_decay_keeps_less_of_what_was_learnt(scorer):
    text = repeated_text()
    gains = [scorer.score_dynamic(text, DynamicSettings(lr=3e-3, decay=d, window=16)).gain for d in (0.0, 0.3)]
    assert gains[0] > gains[1] > 0


# ---------------------------------------------------------------------------------------
# nothing is changed


def test_the_model_and_the_run_directory_are_unchanged(run, scorer, tmp_path):
    before_files = snapshot(run)
    before_weights = weights(scorer.model)
    static_before = scorer.score_text(repeated_text()).nll
    assert scorer.score_dynamic(repeated_text(), FAST).gain > 0.5
    after = weights(scorer.model)
    assert all(torch.equal(before_weights[name], after[name]) for name in before_weights)
    assert not scorer.model.training
    assert scorer.score_text(repeated_text()).nll == static_before
    text = tmp_path / "text.txt"
    text.write_text(repeated_text(), encoding="utf-8")
    assert invoke("perplexity", str(run), "--data", str(text), "--dynamic", "--threads", "1").exit_code == 0
    assert invoke("perplexity", str(run), "--dynamic", "--threads", "1", "--json").exit_code == 0
    assert snapshot(run) == before_files  # every file: the same bytes and modification time


# ---------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def repeated_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "repeated.txt"
    path.write_text(repeated_text(), encoding="utf-8")
    return path


def test_cli_prints_static_and_dynamic_side_by_side(run, repeated_file):
    result = invoke(
        "perplexity", str(run), "--data", str(repeated_file), "--dynamic", "--dynamic-lr", "0.003",
        "--dynamic-decay", "0", "--dynamic-window", "16", "--threads", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    expected = Scorer(run).score_dynamic(repeated_file.read_text(encoding="utf-8"), FAST)
    header = next(line for line in out.splitlines() if "static" in line and "dynamic" in line)
    assert header.index("static") < header.index("dynamic")
    loss_row = next(line for line in out.splitlines() if line.strip().startswith("loss (nats/token)"))
    assert loss_row.split()[-2:] == [f"{expected.static.loss:.4f}", f"{expected.dynamic.loss:.4f}"]
    notes = [line for line in out.splitlines() if line.startswith(("static:", "dynamic (", "method:"))]
    assert [note.split()[0] for note in notes] == ["static:", "dynamic", "method:"], out
    assert notes[1].startswith("dynamic (adapted while scoring: lr 0.003, decay 0, rms step, windows of 16)")
    assert f"{expected.gain:.4f} nats/token" in notes[1]


def test_cli_json_has_a_static_and_a_dynamic_object(run, repeated_file):
    plain = invoke("perplexity", str(run), "--data", str(repeated_file), "--json", "--threads", "1")
    both = invoke("perplexity", str(run), "--data", str(repeated_file), "--json", "--dynamic", "--threads", "1")
    assert plain.exit_code == 0 and both.exit_code == 0, both.stderr
    static_only, record = json.loads(plain.stdout), json.loads(both.stdout)
    assert {"text", "static", "dynamic", "dynamic_gain_nats_per_token", "method"} <= set(record)
    assert record["text"] == static_only["text"] and record["method"] == static_only["method"]
    for key, value in record["static"].items():
        if key != "seconds":
            assert value == static_only[key], key
    assert record["dynamic"]["settings"] == DynamicSettings().to_dict()
    assert record["dynamic"]["tokens"] == record["static"]["tokens"]
    gain = record["static"]["loss_nats_per_token"] - record["dynamic"]["loss_nats_per_token"]
    assert record["dynamic_gain_nats_per_token"] == pytest.approx(gain)
    assert gain > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dynamic", "--dynamic-lr", "-0.1"], "--dynamic-lr must be a number >= 0 (got -0.1)"),
        (["--dynamic", "--dynamic-lr", "nan"], "--dynamic-lr"),
        (["--dynamic", "--dynamic-decay", "1.5"], "--dynamic-decay must be in [0, 1] (got 1.5)"),
        (["--dynamic", "--dynamic-decay", "-0.01"], "--dynamic-decay must be in [0, 1]"),
        (["--dynamic", "--dynamic-window", "0"], "--dynamic-window must be at least 1"),
        (["--dynamic", "--per-line"], "--dynamic cannot be combined with --per-line"),
        (["--dynamic-lr", "0.01"], "--dynamic-lr goes with --dynamic"),
        (["--dynamic-step", "sgd"], "--dynamic-step goes with --dynamic"),
    ],
)
def test_cli_bad_dynamic_settings_are_one_line_errors(run, repeated_file, args, needle):
    result = invoke("perplexity", str(run), "--data", str(repeated_file), *args)
    assert_user_error(result, needle)


def test_a_bad_setting_from_the_environment_names_the_variable(run, repeated_file):
    result = invoke(
        "perplexity", str(run), "--data", str(repeated_file), "--dynamic", env={"CHARLM_PERPLEXITY_DYNAMIC_DECAY": "2"}
    )
    assert_user_error(result, "--dynamic-decay", "CHARLM_PERPLEXITY_DYNAMIC_DECAY")
    alone = invoke("perplexity", str(run), "--data", str(repeated_file), env={"CHARLM_PERPLEXITY_DYNAMIC_LR": "0.01"})
    assert_user_error(alone, "--dynamic-lr", "CHARLM_PERPLEXITY_DYNAMIC_LR", "goes with --dynamic")


def test_settings_check_names_the_library_field():
    with pytest.raises(OptionError) as caught:
        DynamicSettings(lr=-1.0).validate()
    assert caught.value.option == "dynamic_lr"
    with pytest.raises(OptionError) as caught:
        DynamicSettings(step="adam").validate()
    assert caught.value.option == "dynamic_step"


@pytest.mark.slow
def test_benchmark_script_writes_its_table_and_json(run, repeated_file, tmp_path):
    out = tmp_path / "dynamic_eval.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "dynamic_eval.py"), str(run), "--data", str(repeated_file),
         "--chars", "1000", "--lr", "0,0.003", "--decay", "0", "--threads", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dynamic loss" in done.stdout and f"wrote {out}" in done.stdout
    result = json.loads(out.read_text())
    assert result["tokens"] == 1000 and [row["lr"] for row in result["rows"]] == [0.0, 0.003]
    still, adapted = result["rows"]
    assert still["dynamic_loss"] == pytest.approx(still["static_loss"], rel=1e-6)
    assert adapted["gain_nats_per_token"] > 0.1
    assert all(row["dynamic_seconds"] >= 0 and row["static_seconds"] >= 0 for row in result["rows"])
