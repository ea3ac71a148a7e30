"""Scoring text under a model: charlm.inference.scoring (Score, score_tokens, score_sequences, Scorer),
TextCounter, and the `charlm perplexity` command.

Covered here:
  * exact figures from models whose distribution is known by construction: a memoryless model
    (zero head weight, head bias = log p; or an all-zero head, the uniform distribution) and a
    bigram model (rnn-relu with identity embedding and input weights, no recurrence, head =
    log P(next | current)). nats/token, perplexity, bits/char, bits/byte (multi-byte
    characters, so chars != bytes) and word perplexity are checked against sums computed by
    hand from the token counts, including the first token predicted after the context token;
  * the method: for the memoryless and bigram models the total is the same for any number of
    lanes and any window; a hand-set stateful model (its state counts one token since the lane
    began) matches the documented lanes, resets and tail computed by hand; for a trained LSTM (real state) it is the same for any window at a
    fixed lane count, every token is scored, and it equals a reference that follows the
    module docstring literally (lanes from a zero state reading the token before, tail
    continuing the last lane); at most one lane per min_lane_tokens;
  * the run's validation figure: Scorer(run).score_split('val') and `charlm perplexity RUN
    --split val --json` reproduce the loss, bits/char, bits/byte and perplexity that training
    logged in its last eval event, also for a run trained with a non-default
    --eval-batch-size;
  * sizes: char, byte and SentencePiece models on the same multi-script text (inline, and a
    slice of udhr_multiscript.txt when present) report the same chars, bytes and words, and
    bits/byte = NLL / (bytes ln 2); prepare_corpus counts each split's text the same way;
  * per-line mode equals scoring each line alone (lines longer than the window, empty lines,
    any batch size); the CLI's --per-line --json, --field and its errors;
  * unknown symbols (counted, scored, warned about), empty input (API and CLI), stdin;
  * CLI output: the table, the method line, --json keys (strict JSON), bf16 against fp32
    (when the CPU runs bf16 natively), and one-line errors for bad options;
  * TextCounter across chunk boundaries.

Models are tiny (hidden <= 32) and run in fp32 on the CPU; trained runs use the real Trainer
into real run directories, and the CLI runs as real subprocesses (CliRunner for errors).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
from helpers import assert_user_error, invoke, multiscript_text, run_cli, train_tiny_run, udhr_slice, word_text

from charlm.config import ModelConfig
from charlm.errors import CharlmError
from charlm.hardware import cpu_supports_bf16
from charlm.inference.scorer import Scorer
from charlm.inference.scoring import score_sequences, score_tokens
from charlm.models.rnnlm import RNNLM
from charlm.runs.directory import RunDirectory
from charlm.text.corpus import prepare_corpus
from charlm.text.sentencepiece import SentencePieceTokenizer
from charlm.text.sources import TextCounter
from charlm.text.tokenizer import ByteTokenizer, CharTokenizer, context_token_id

CPU = torch.device("cpu")
LN2 = math.log(2)


# ---------------------------------------------------------------------------------------
# texts


def sizes(text: str) -> tuple[int, int, int]:
    """(chars, UTF-8 bytes, whitespace-separated words), counted independently of charlm."""
    return len(text), len(text.encode("utf-8")), len(text.split())


# ---------------------------------------------------------------------------------------
# hand-set models


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    options = dict(cell="lstm", layers=1, hidden=8, embed=8, dropout=0.0, tie_weights=False)
    options.update(overrides)
    return ModelConfig(vocab_size=vocab_size, **options)


def memoryless_model(probs: np.ndarray) -> RNNLM:
    """An LSTM whose output ignores input and state: logits = log p at every position."""
    torch.manual_seed(0)
    model = RNNLM(tiny_config(len(probs)))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.from_numpy(np.log(probs)).float())
    return model.eval()


def uniform_model(vocab_size: int) -> RNNLM:
    """All-zero head: every token has probability 1/V, whatever came before."""
    torch.manual_seed(0)
    model = RNNLM(tiny_config(vocab_size))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model.eval()


def bigram_model(transitions: np.ndarray) -> RNNLM:
    """rnn-relu with E = H = V: embedding and W_ih are the identity, W_hh and biases zero, so the
    hidden state is the one-hot current token; head weight[j, i] = log P(j | i), bias 0."""
    V = transitions.shape[0]
    model = RNNLM(tiny_config(V, cell="rnn-relu", hidden=V, embed=V))
    eye = torch.eye(V)
    with torch.no_grad():
        model.embedding.weight.copy_(eye)
        model.rnn.weight_ih_l0.copy_(eye)
        model.rnn.weight_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
        model.head.weight.copy_(torch.from_numpy(np.log(transitions).T.copy()).float())
        model.head.bias.zero_()
    return model.eval()


def random_transitions(V: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.05, 1.0, size=(V, V)) ** 3  # uneven, but every entry positive
    return raw / raw.sum(axis=1, keepdims=True)


def bigram_nll(ids: Sequence[int], context_id: int, transitions: np.ndarray) -> float:
    """-log P(t0 | context) - sum log P(t_i | t_{i-1}), in float64."""
    previous = np.concatenate([[context_id], np.asarray(ids[:-1], dtype=np.int64)])
    return float(-np.log(transitions[previous, np.asarray(ids, dtype=np.int64)]).sum())


def reference_nll(model: RNNLM, ids: np.ndarray, context_id: int, lanes: int) -> float:
    """The module docstring's method written out one lane at a time: lane b predicts
    t[b*S .. b*S+S-1] from a zero state reading the token before each one (the context token
    before t0); the last lane goes on to the end of the text with its state."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    span = n // lanes
    stream = np.concatenate([[context_id], ids])  # stream[k] is the token before ids[k]
    total = 0.0
    with torch.no_grad():
        for b in range(lanes):
            first = b * span
            last = n if b == lanes - 1 else first + span
            x = torch.from_numpy(stream[first:last][None, :])
            y = torch.from_numpy(ids[first:last])
            logits, _ = model(x)
            total += float(torch.nn.functional.cross_entropy(logits[0].double(), y, reduction="sum"))
    return total


# Seven symbols of 1 to 4 UTF-8 bytes (plus newline and space); id 0 is the unknown symbol.
ALPHABET = "\n ab\u00e9\u4e2d\U0001f600"  # newline, space, a, b, é, 中, 😀


def alphabet_tokenizer() -> CharTokenizer:
    return CharTokenizer.fit([ALPHABET])


# ---------------------------------------------------------------------------------------
# trained runs


def train_run(root: Path, text: str, steps: int = 60, eval_batch_size: int = 16, val_fraction: float = 0.2) -> Path:
    """Train a tiny char LSTM with the real Trainer into root/run; one eval, at the end."""
    return train_tiny_run(root, text, val_fraction=val_fraction, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5,
                          max_steps=steps, eval_every=100_000, checkpoint_every=100_000, log_every=20,
                          eval_batch_size=eval_batch_size, seed=0)  # fmt: skip


def last_eval(run_path: Path) -> dict:
    events = [e for e in RunDirectory(run_path).read_metrics() if e.get("event") == "eval"]
    assert events, "training logged no eval event"
    return events[-1]


# 30 KB: the 20% validation split is ~6,000 tokens, so validation uses several lanes (one per
# 1,000 tokens), and the few "§" in it never occur in the training split (unknown symbols).
VAL_TEXT = word_text(24_000, seed=1) + word_text(6_000, seed=2).replace("mat", "m§t", 3)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A char LSTM (hidden 32) trained for 60 steps, validated with the default 16 lanes."""
    root = tmp_path_factory.mktemp("trained")
    return train_run(root, VAL_TEXT)


@pytest.fixture(scope="module")
def trained_scorer(trained_run) -> Scorer:
    return Scorer(trained_run)


# ---------------------------------------------------------------------------------------
# CLI helpers


def perplexity_cli(run: Path, *args: str, stdin: bytes = b""):
    """`python -m charlm perplexity RUN ARGS` in a child (one thread, so figures match in-process ones)."""
    return run_cli("perplexity", str(run), "--threads", "1", "--device", "cpu", *args, stdin=stdin)


def strict_json(line: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(name: str):
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(line, parse_constant=refuse)


# ---------------------------------------------------------------------------------------
# known distributions


PROBS = np.array([0.02, 0.08, 0.2, 0.1, 0.15, 0.2, 0.05, 0.2])  # ids 0 (unknown) .. 7


def test_memoryless_model_gives_the_hand_computed_figures():
    tok = alphabet_tokenizer()
    assert tok.vocab_size == len(PROBS)
    text = "ab \u00e9\u4e2d\n\U0001f600a b\u00e9\n\u4e2d\u4e2d ab\U0001f600 \n"
    ids = tok.encode(text)
    scorer = Scorer(memoryless_model(PROBS), tok)
    score = scorer.score_text(text)

    counts = np.bincount(ids.astype(np.int64), minlength=len(PROBS))
    nll = float(-(counts * np.log(PROBS)).sum())  # the context token is not scored
    chars, nbytes, words = sizes(text)
    assert nbytes > chars  # multi-byte characters: bits/char and bits/byte differ
    assert (score.tokens, score.chars, score.bytes, score.words) == (len(text), chars, nbytes, words)
    assert score.unknown == 0
    assert score.nll == pytest.approx(nll, rel=1e-6)
    assert score.loss == pytest.approx(nll / len(text), rel=1e-6)
    assert score.perplexity == pytest.approx(math.exp(nll / len(text)), rel=1e-6)
    assert score.bits_per_token == pytest.approx(nll / len(text) / LN2, rel=1e-6)
    assert score.bits_per_char == pytest.approx(nll / (chars * LN2), rel=1e-6)
    assert score.bits_per_byte == pytest.approx(nll / (nbytes * LN2), rel=1e-6)
    assert score.word_perplexity == pytest.approx(math.exp(nll / words), rel=1e-6)
    assert score.lanes == 1 and score.context_resets == 0


def test_uniform_model_scores_ln_v_per_token_for_char_and_byte_models():
    text = "ab \u00e9\u4e2d\n\U0001f600 b\n"
    chars, nbytes, words = sizes(text)

    char_tok = alphabet_tokenizer()
    char = Scorer(uniform_model(char_tok.vocab_size), char_tok).score_text(text)
    assert char.tokens == chars
    assert char.loss == pytest.approx(math.log(char_tok.vocab_size), rel=1e-6)
    assert char.bits_per_char == pytest.approx(math.log2(char_tok.vocab_size), rel=1e-6)
    assert char.bits_per_byte == pytest.approx(chars * math.log2(char_tok.vocab_size) / nbytes, rel=1e-6)

    byte = Scorer(uniform_model(256), ByteTokenizer()).score_text(text)
    assert byte.tokens == nbytes
    assert byte.loss == pytest.approx(math.log(256), rel=1e-6)
    assert byte.perplexity == pytest.approx(256.0, rel=1e-5)
    assert byte.bits_per_byte == pytest.approx(8.0, rel=1e-6)
    assert byte.bits_per_char == pytest.approx(8.0 * nbytes / chars, rel=1e-6)
    # exp() magnifies float32 rounding of the NLL, so compare word perplexity in the log domain
    assert math.log(byte.word_perplexity) == pytest.approx(nbytes * math.log(256) / words, rel=1e-6)


def test_bigram_model_scores_pairs_and_the_first_token_after_the_context_token():
    tok = alphabet_tokenizer()
    V = tok.vocab_size
    transitions = random_transitions(V, seed=3)
    scorer = Scorer(bigram_model(transitions), tok)
    text = "ab\u00e9 \u4e2d\U0001f600\nba \u00e9\u00e9a\n\U0001f600\U0001f600 b \u4e2da"
    ids = tok.encode(text)
    ctx = context_token_id(tok)
    assert ctx == int(tok.encode("\n")[0])

    score = scorer.score_text(text)
    expected = bigram_nll(ids, ctx, transitions)
    assert score.tokens == len(ids)
    assert score.nll == pytest.approx(expected, rel=1e-6)
    # the first token really is conditioned on the context token, not on something else
    wrong_start = bigram_nll(ids, int(tok.encode("a")[0]), transitions)
    assert abs(wrong_start - expected) > 1e-3
    # and each line alone is its pairs after the context token
    for line in text.split("\n"):
        alone = scorer.score_lines([line])[0]
        assert alone.nll == pytest.approx(bigram_nll(tok.encode(line), ctx, transitions), rel=1e-6)


@pytest.mark.parametrize("lanes", [1, 2, 7, 16])
@pytest.mark.parametrize("window", [1, 5, 256])
def test_lanes_and_windows_do_not_change_a_bigram_or_memoryless_total(lanes, window):
    V = 8
    rng = np.random.default_rng(11)
    ids = rng.integers(0, V, size=301)
    ctx = 1
    transitions = random_transitions(V, seed=5)

    bigram = score_tokens(bigram_model(transitions), ids, ctx, lanes=lanes, window=window, min_lane_tokens=1)
    assert bigram.tokens == len(ids)
    assert bigram.lanes == lanes and bigram.context_resets == lanes - 1
    assert bigram.nll == pytest.approx(bigram_nll(ids, ctx, transitions), rel=1e-6)

    memoryless = score_tokens(memoryless_model(PROBS), ids, ctx, lanes=lanes, window=window, min_lane_tokens=1)
    assert memoryless.tokens == len(ids)
    assert memoryless.nll == pytest.approx(float(-np.log(PROBS[ids]).sum()), rel=1e-6)


# The counting model: its state is the number of times token 2 was read since the lane began,
# and logit j = COUNT_SLOPES[j] * count, so every prediction depends on the lane's history.
COUNT_SLOPES = np.array([0.0, 0.03125, -0.0625, 0.0625])  # exact in float32
COUNTED = 2


def counting_model() -> RNNLM:
    """rnn-relu, E = V = 4, H = 1: embedding = identity, W_ih picks token 2, W_hh = 1, biases 0,
    so h_t = h_{t-1} + [input_t == 2]; head weight = COUNT_SLOPES, bias 0."""
    V = len(COUNT_SLOPES)
    model = RNNLM(tiny_config(V, cell="rnn-relu", hidden=1, embed=V))
    with torch.no_grad():
        model.embedding.weight.copy_(torch.eye(V))
        model.rnn.weight_ih_l0.zero_()
        model.rnn.weight_ih_l0[0, COUNTED] = 1.0
        model.rnn.weight_hh_l0.fill_(1.0)
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
        model.head.weight.copy_(torch.from_numpy(COUNT_SLOPES[:, None]).float())
        model.head.bias.zero_()
    return model.eval()


def counting_nll(ids: np.ndarray, context_id: int, lanes: int) -> float:
    """The documented method for the counting model, by hand in float64: B lanes of S = N // B
    predictions from a zero count, each reading the token before its first prediction; the
    last lane continues to the end of the text."""
    n = len(ids)
    span = n // lanes
    stream = np.concatenate([[context_id], ids])
    total = 0.0
    for b in range(lanes):
        count = 0
        for p in range(b * span, n if b == lanes - 1 else (b + 1) * span):
            count += int(stream[p] == COUNTED)
            logits = COUNT_SLOPES * count
            total -= logits[ids[p]] - math.log(np.exp(logits).sum())
    return total


def counting_text(n: int, seed: int) -> np.ndarray:
    """Token 2 is common at the start and rare at the end, so lanes end with different counts."""
    rng = np.random.default_rng(seed)
    p2 = np.linspace(0.7, 0.02, n)
    other = rng.integers(0, 4, size=n)
    other[other == COUNTED] = 3
    return np.where(rng.random(n) < p2, COUNTED, other).astype(np.int64)


@pytest.mark.parametrize("lanes", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("window", [1, 5, 256])
def test_stateful_counting_model_follows_the_documented_lanes_exactly(lanes, window):
    ids = counting_text(301, seed=lanes)  # 301 tokens: lanes 2, 3 and 16 leave a tail
    score = score_tokens(counting_model(), ids, 1, lanes=lanes, window=window, min_lane_tokens=1)
    assert score.tokens == len(ids)
    assert score.lanes == lanes and score.context_resets == lanes - 1
    expected = counting_nll(ids, 1, lanes)
    assert score.nll == pytest.approx(expected, rel=1e-6)
    # the state matters: one lane fewer or more gives another total
    assert abs(counting_nll(ids, 1, lanes + 1) - expected) > 1e-3 * expected


def test_more_lanes_than_tokens_still_scores_every_token_once():
    transitions = random_transitions(8, seed=6)
    ids = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    score = score_tokens(bigram_model(transitions), ids, 2, lanes=16, window=2, min_lane_tokens=1)
    assert score.tokens == 5 and score.lanes == 5 and score.context_resets == 4
    assert score.nll == pytest.approx(bigram_nll(ids, 2, transitions), rel=1e-6)


def test_at_most_one_lane_per_min_lane_tokens():
    tok = alphabet_tokenizer()
    scorer = Scorer(memoryless_model(PROBS), tok)  # 16 lanes asked for by default
    short = scorer.score_text("ab " * 333)  # 999 tokens: one lane, no reset
    assert (short.tokens, short.lanes, short.context_resets) == (999, 1, 0)
    longer = scorer.score_text("ab " * 834)  # 2,502 tokens: two lanes
    assert (longer.tokens, longer.lanes, longer.context_resets) == (2502, 2, 1)
    # and the lanes cost nothing for a memoryless model
    assert longer.nll == pytest.approx(-834 * (math.log(PROBS[3]) + math.log(PROBS[4]) + math.log(PROBS[2])), rel=1e-6)
    assert score_tokens(scorer.model, tok.encode("ab " * 834), 1, lanes=16, min_lane_tokens=100).lanes == 16


def test_empty_token_array_scores_nothing():
    score = score_tokens(uniform_model(4), np.zeros(0, dtype=np.int64), 1)
    assert score.tokens == 0 and score.nll == 0.0 and math.isnan(score.loss)


# ---------------------------------------------------------------------------------------
# a trained model with real state


@pytest.fixture(scope="module")
def trained_ids(trained_scorer) -> np.ndarray:
    return trained_scorer.tokenizer.encode(word_text(1_503, seed=7))


@pytest.mark.parametrize("lanes", [1, 4])
def test_trained_model_result_does_not_depend_on_the_window(trained_scorer, trained_ids, lanes):
    model, ctx = trained_scorer.model, trained_scorer.context_id
    results = {}
    for window in (1, 7, 64, 256, 5000):
        score = score_tokens(model, trained_ids, ctx, lanes=lanes, window=window, min_lane_tokens=100)
        assert score.tokens == len(trained_ids)
        assert score.lanes == lanes and score.context_resets == lanes - 1
        results[window] = score.nll
    reference = reference_nll(model, trained_ids, ctx, lanes)
    for window, nll in results.items():
        assert nll == pytest.approx(reference, rel=1e-6), f"window {window}"


def test_trained_model_lanes_are_real_context_resets(trained_scorer, trained_ids):
    model, ctx = trained_scorer.model, trained_scorer.context_id
    one = score_tokens(model, trained_ids, ctx, lanes=1, min_lane_tokens=100).nll
    four = score_tokens(model, trained_ids, ctx, lanes=4, min_lane_tokens=100).nll
    assert one != pytest.approx(four, rel=1e-6)  # a stateful model sees the resets
    # with 1,503 tokens and the default one lane per 1,000 tokens, 16 lanes become one
    assert score_tokens(model, trained_ids, ctx, lanes=16).nll == pytest.approx(one, rel=1e-9)


def test_score_tokens_leaves_the_model_in_training_mode_if_it_was(trained_scorer, trained_ids):
    model = trained_scorer.model
    model.train()
    try:
        score_tokens(model, trained_ids[:50], trained_scorer.context_id)
        assert model.training
    finally:
        model.eval()


# ---------------------------------------------------------------------------------------
# the run's own validation split


def test_score_split_val_equals_the_last_logged_validation(trained_run):
    event = last_eval(trained_run)
    split, score = Scorer(trained_run).score_split("val")
    assert split == "val"
    assert score.tokens == event["tokens"]
    assert score.lanes > 1  # ~6,000 tokens: several lanes, as in validation
    assert score.loss == pytest.approx(event["loss"], rel=1e-9)
    assert score.bits_per_char == pytest.approx(event["bpc"], rel=1e-9)
    assert score.bits_per_byte == pytest.approx(event["bpb"], rel=1e-9)
    assert score.perplexity == pytest.approx(event["perplexity"], rel=1e-9)
    assert score.word_perplexity == pytest.approx(event["word_perplexity"], rel=1e-9)
    # no test split: auto takes val
    assert Scorer(trained_run).score_split("auto")[0] == "val"


def test_score_split_sizes_and_unknown_match_the_val_text(trained_run):
    _, score = Scorer(trained_run).score_split("val")
    val_text = VAL_TEXT[len(VAL_TEXT) - int(len(VAL_TEXT) * 0.2) :]
    assert (score.chars, score.bytes, score.words) == sizes(val_text)
    assert score.tokens == len(val_text)
    assert score.unknown == val_text.count("\u00a7") == 3


@pytest.mark.slow
def test_cli_split_val_equals_the_last_logged_validation(trained_run):
    event = last_eval(trained_run)
    done = perplexity_cli(trained_run, "--split", "val", "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["tokens"] == event["tokens"]
    assert record["loss_nats_per_token"] == pytest.approx(event["loss"], rel=1e-9)
    assert record["bits_per_char"] == pytest.approx(event["bpc"], rel=1e-9)
    assert record["bits_per_byte"] == pytest.approx(event["bpb"], rel=1e-9)
    assert record["perplexity"] == pytest.approx(event["perplexity"], rel=1e-9)
    assert "val split" in record["text"]
    assert record["unknown"] == 3
    assert "not in the model's vocabulary" in done.stderr


@pytest.fixture(scope="module")
def four_lane_run(tmp_path_factory) -> Path:
    """The same corpus, validated with --eval-batch-size 4 (not the CLI's default 16 lanes)."""
    root = tmp_path_factory.mktemp("four-lanes")
    return train_run(root, VAL_TEXT, steps=20, eval_batch_size=4)


def test_score_split_reproduces_validation_of_a_run_with_other_eval_lanes(four_lane_run):
    """Validation ran with 4 lanes on ~6,000 tokens; scoring the run's own val split must give
    the figure training logged, not one computed with a different number of context resets."""
    event = last_eval(four_lane_run)
    _, four = Scorer(four_lane_run, lanes=4).score_split("val")  # asked for explicitly: it matches
    assert (four.lanes, four.loss) == (4, pytest.approx(event["loss"], rel=1e-9))
    _, score = Scorer(four_lane_run).score_split("val")  # the default must match as well
    assert score.loss == pytest.approx(event["loss"], rel=1e-9)


@pytest.mark.slow
def test_cli_split_val_reproduces_validation_of_a_run_with_other_eval_lanes(four_lane_run):
    event = last_eval(four_lane_run)
    done = perplexity_cli(four_lane_run, "--split", "val", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["loss_nats_per_token"] == pytest.approx(event["loss"], rel=1e-9)


def test_prepare_corpus_counts_each_split_like_the_text(tmp_path):
    text = multiscript_text(300, seed=4)
    path = tmp_path / "multi.txt"
    path.write_text(text, encoding="utf-8")
    corpus = prepare_corpus(
        str(path), val_fraction=0.2, test_fraction=0.1, tokenizer="char", cache_root=tmp_path / "cache"
    )
    n = len(text)
    cut_test, cut_val = int(n * 0.1), int(n * 0.2)
    pieces = {
        "train": text[: n - cut_val - cut_test],
        "val": text[n - cut_val - cut_test : n - cut_test],
        "test": text[n - cut_test :],
    }
    for name, piece in pieces.items():
        assert (corpus.chars[name], corpus.bytes[name], corpus.words[name]) == sizes(piece), name
        assert len(corpus.splits[name]) == len(piece)


# ---------------------------------------------------------------------------------------
# char, byte and SentencePiece models on the same multi-script text


def three_scorers(text: str, spm_vocab: int) -> dict[str, Scorer]:
    char_tok = CharTokenizer.fit([text])
    spm_tok = SentencePieceTokenizer.train([text], vocab_size=spm_vocab)
    out = {}
    for tok in (char_tok, ByteTokenizer(), spm_tok):
        torch.manual_seed(1)
        out[tok.kind] = Scorer(RNNLM(tiny_config(tok.vocab_size)), tok)
    return out


def check_consistent_sizes(text: str, scorers: dict[str, Scorer]) -> None:
    chars, nbytes, words = sizes(text)
    assert nbytes > chars
    for kind, scorer in scorers.items():
        ids = scorer.tokenizer.encode(text)
        assert scorer.tokenizer.decode(ids) == text, kind
        score = scorer.score_text(text)
        assert (score.chars, score.bytes, score.words) == (chars, nbytes, words), kind
        assert score.tokens == len(ids), kind
        assert score.unknown == 0, kind
        assert math.isfinite(score.nll) and score.nll > 0, kind
        assert score.bits_per_byte == pytest.approx(score.nll / (nbytes * LN2), rel=1e-12), kind
        assert score.bits_per_char == pytest.approx(score.nll / (chars * LN2), rel=1e-12), kind
        # the same text given in chunks cut at newlines counts and scores the same
        lines = text.splitlines(keepends=True)
        chunked = scorer.score_text(["".join(lines[: len(lines) // 2]), "".join(lines[len(lines) // 2 :])])
        assert (chunked.tokens, chunked.chars, chunked.bytes, chunked.words) == (
            score.tokens,
            score.chars,
            score.bytes,
            score.words,
        )
        assert chunked.nll == pytest.approx(score.nll, rel=1e-6), kind
    assert scorers["char"].score_text(text).tokens == chars
    assert scorers["byte"].score_text(text).tokens == nbytes
    assert scorers["sentencepiece"].score_text(text).tokens < nbytes


def test_char_byte_and_sentencepiece_report_the_same_sizes_on_multiscript_text():
    text = multiscript_text(200, seed=8)
    check_consistent_sizes(text, three_scorers(text, spm_vocab=400))


def test_char_byte_and_sentencepiece_report_the_same_sizes_on_udhr():
    text = udhr_slice()
    check_consistent_sizes(text, three_scorers(text, spm_vocab=600))


def test_uniform_sentencepiece_model_scores_ln_v_per_token():
    text = multiscript_text(200, seed=9)
    tok = SentencePieceTokenizer.train([text], vocab_size=400)
    score = Scorer(uniform_model(tok.vocab_size), tok).score_text(text)
    assert score.loss == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    assert score.bits_per_byte == pytest.approx(score.tokens * math.log2(tok.vocab_size) / len(text.encode()), rel=1e-6)


# ---------------------------------------------------------------------------------------
# per-line scoring


PER_LINE = [
    "the cat sat",
    "",
    "a",
    "dog ran far and then slept under the warm sun while birds sang",  # longer than the window
    "mat.",
    "",
    "birds sang on the mat and the dog slept",
]


def test_score_lines_equals_scoring_each_line_alone(trained_run):
    scorer = Scorer(trained_run, window=8)
    scores = scorer.score_lines(PER_LINE)
    assert len(scores) == len(PER_LINE)
    for line, score in zip(PER_LINE, scores):
        assert score.tokens == len(line)
        assert (score.chars, score.bytes, score.words) == sizes(line)
        if not line:
            assert score.nll == 0.0
            continue
        alone = scorer.score_text(line)
        assert score.nll == pytest.approx(alone.nll, rel=1e-6), line
    # a line is its own context: not the same as scoring it after the previous lines
    assert scores[3].nll != pytest.approx(
        scorer.score_text("\n".join(PER_LINE[:4])).nll - scorer.score_text("\n".join(PER_LINE[:3]) + "\n").nll, rel=1e-6
    )


def test_score_sequences_batch_size_and_window_do_not_matter(trained_scorer):
    tok = trained_scorer.tokenizer
    encoded = [tok.encode(line) for line in PER_LINE]
    base = score_sequences(trained_scorer.model, encoded, trained_scorer.context_id, batch_size=64, window=256)
    for batch_size, window in ((1, 256), (2, 3), (3, 1), (64, 8)):
        other = score_sequences(
            trained_scorer.model, encoded, trained_scorer.context_id, batch_size=batch_size, window=window
        )
        assert other == pytest.approx(base, rel=1e-6), (batch_size, window)
    ref = [
        reference_nll(trained_scorer.model, ids, trained_scorer.context_id, 1) if len(ids) else 0.0 for ids in encoded
    ]
    assert base == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow
def test_cli_per_line_json_gives_one_object_per_line(trained_run, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(PER_LINE) + "\n", encoding="utf-8")
    done = perplexity_cli(trained_run, "--data", str(path), "--per-line", "--json", "--window", "8")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(PER_LINE) + 1))  # the final newline adds none
    expected = Scorer(trained_run).score_lines(PER_LINE)
    for record, score, line in zip(records, expected, PER_LINE):
        assert record["tokens"] == len(line)
        assert record["nll_nats"] == pytest.approx(score.nll, rel=1e-6)
        assert record["chars"] == len(line)


@pytest.mark.slow
def test_cli_per_line_table(trained_run, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("the cat sat\n\nbirds sang\n", encoding="utf-8")
    done = perplexity_cli(trained_run, "--data", str(path), "--per-line")
    assert done.returncode == 0, done.stderr
    assert "nats/token" in done.stdout and "bits/char" in done.stdout
    assert "the cat sat" in done.stdout and "birds sang" in done.stdout


@pytest.mark.slow
def test_cli_per_line_field_reads_json_lines(trained_run, tmp_path):
    path = tmp_path / "records.jsonl"
    texts = ["the cat sat", "a dog ran far and then slept", "sun"]
    rows = [json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    path.write_text(rows[0] + "\n\n" + rows[1] + "\n" + rows[2] + "\n", encoding="utf-8")
    done = perplexity_cli(trained_run, "--data", str(path), "--per-line", "--field", "text", "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4]  # file line numbers; the blank line skipped
    expected = Scorer(trained_run).score_lines(texts)
    for record, score, text in zip(records, expected, texts):
        assert record["tokens"] == len(text)
        assert record["nll_nats"] == pytest.approx(score.nll, rel=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        '{"text": "fine"}\nnot json at all\n',
        '{"text": "fine"}\n{"other": "x"}\n',
        '{"text": "fine"}\n{"text": 3}\n',
        '{"text": "fine"}\n["text"]\n',
    ],
)
def test_cli_per_line_field_bad_line_is_a_one_line_error(trained_run, tmp_path, bad):
    path = tmp_path / "records.jsonl"
    path.write_text(bad, encoding="utf-8")
    result = invoke(
        "perplexity", str(trained_run), "--data", str(path), "--per-line", "--field", "text", "--threads", "1"
    )
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    error = assert_user_error(result, alone=False)
    assert "line 2" in error
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------
# unknown symbols, empty input, stdin


def test_unknown_symbols_are_counted_and_scored(trained_scorer):
    text = "the cat \u03a9\u03a9 sat \u4e2d\n"
    score = trained_scorer.score_text(text)
    assert score.unknown == 3
    assert score.tokens == len(text)
    assert math.isfinite(score.nll) and score.nll > 0
    known = trained_scorer.score_text("the cat  sat \n")
    assert known.unknown == 0
    # per line too
    assert [s.unknown for s in trained_scorer.score_lines(["\u03a9a", "ab"])] == [1, 0]


def test_byte_and_sentencepiece_models_have_no_unknown_symbols():
    text = multiscript_text(60, seed=10)
    for kind, scorer in three_scorers(text, spm_vocab=300).items():
        if kind == "char":
            continue
        assert scorer.score_text("new \u03a9 \U0001f680 text").unknown == 0, kind


@pytest.mark.slow
def test_cli_warns_about_unknown_symbols(trained_run, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the cat \u03a9 sat on the mat \u4e2d\n", encoding="utf-8")
    done = perplexity_cli(trained_run, "--data", str(path), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["unknown"] == 2
    assert "warning:" in done.stderr and "not in the model's vocabulary" in done.stderr
    assert "Traceback" not in done.stderr


def test_empty_text_is_an_error(trained_scorer):
    with pytest.raises(CharlmError, match="empty"):
        trained_scorer.score_text("")
    with pytest.raises(CharlmError):
        trained_scorer.score_text([])
    # whitespace is text: it is scored
    assert trained_scorer.score_text(" \n").tokens == 2


@pytest.mark.slow
def test_cli_empty_stdin_is_a_one_line_error(trained_run):
    done = perplexity_cli(trained_run, "--data", "-", stdin=b"")
    error = assert_user_error(done, alone=False)
    assert "empty" in error
    assert done.stdout == ""


def test_cli_empty_file_is_a_one_line_error(trained_run, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    result = invoke("perplexity", str(trained_run), "--data", str(path), "--threads", "1")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert_user_error(result, alone=False)


@pytest.mark.slow
def test_cli_scores_stdin(trained_run, trained_scorer):
    text = "the dog sat on the warm mat.\nbirds sang \u00e9\n"
    done = perplexity_cli(trained_run, "--data", "-", "--json", stdin=text.encode("utf-8"))
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    expected = trained_scorer.score_text(text)
    assert record["text"] == "stdin"
    assert (record["tokens"], record["chars"], record["bytes"], record["words"]) == (len(text), *sizes(text))
    assert record["nll_nats"] == pytest.approx(expected.nll, rel=1e-6)


@pytest.mark.slow
def test_cli_invalid_utf8_on_stdin_is_a_one_line_error(trained_run):
    done = perplexity_cli(trained_run, "--data", "-", stdin=b"the cat \xff sat\n")
    error = assert_user_error(done, alone=False)
    assert "UTF-8" in error


# ---------------------------------------------------------------------------------------
# CLI output


JSON_KEYS = {
    "tokens",
    "chars",
    "bytes",
    "words",
    "loss_nats_per_token",
    "perplexity",
    "bits_per_char",
    "bits_per_byte",
    "word_perplexity",
    "lanes",
    "context_resets",
}


@pytest.mark.slow
def test_cli_default_table(trained_run, tmp_path):
    path = tmp_path / "text.txt"
    text = word_text(3_000, seed=12)
    path.write_text(text, encoding="utf-8")
    done = perplexity_cli(trained_run, "--data", str(path), "--lanes", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for label in ("bits per character", "bits per byte", "perplexity", "tokens scored", "UTF-8 bytes"):
        assert label in out, label
    method = [line for line in out.splitlines() if line.startswith("method:")]
    assert len(method) == 1, out
    assert "2 lanes" in method[0] and "1 context reset" in method[0]
    expected = Scorer(trained_run, lanes=2).score_text(text)
    assert f"{expected.bits_per_char:.4f}" in out
    assert f"{expected.loss:.4f}" in out
    assert "\x1b[" not in out  # no terminal control sequences on a pipe


@pytest.mark.slow
def test_cli_json_has_every_key_and_matches_the_api(trained_run, tmp_path):
    path = tmp_path / "text.txt"
    text = "the cat sat on the mat.\n\u00e9t\u00e9 \u4e2d\n"
    path.write_text(text, encoding="utf-8")
    done = perplexity_cli(trained_run, "--data", str(path), "--json")
    assert done.returncode == 0, done.stderr
    record = strict_json(done.stdout)
    assert JSON_KEYS <= set(record)
    expected = Scorer(trained_run).score_text(text)
    assert (record["chars"], record["bytes"], record["words"]) == sizes(text)
    assert record["lanes"] == 1 and record["context_resets"] == 0
    for key in ("loss_nats_per_token", "perplexity", "bits_per_char", "bits_per_byte", "word_perplexity"):
        assert record[key] == pytest.approx(expected.to_dict()[key], rel=1e-6), key
    assert record["loss_nats_per_token"] * record["tokens"] == pytest.approx(record["nll_nats"], rel=1e-9)
    assert "1 lane (0 context resets)" in record["method"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["per-line with an empty line", "text without words"])
def test_cli_json_is_strict_json_when_a_figure_is_undefined(trained_run, tmp_path, case):
    """An empty line (0 tokens) or a text with no words has undefined figures; NaN is not JSON
    (strict parsers such as jq or JavaScript's JSON.parse reject it)."""
    path = tmp_path / "text.txt"
    if case == "per-line with an empty line":
        path.write_text("the cat\n\nsat\n", encoding="utf-8")
        done = perplexity_cli(trained_run, "--data", str(path), "--per-line", "--json")
    else:
        path.write_text("   \n", encoding="utf-8")
        done = perplexity_cli(trained_run, "--data", str(path), "--json")
    assert done.returncode == 0, done.stderr
    records = [strict_json(line) for line in done.stdout.splitlines()]
    assert records and all(JSON_KEYS <= set(r) for r in records)


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_cli_bf16_is_within_1e_2_nats_per_token_of_fp32(trained_run, tmp_path):
    """Tolerance: bf16 autocast may move the loss by less than 0.01 nats/token."""
    path = tmp_path / "text.txt"
    text = word_text(2_000, seed=13)
    path.write_text(text, encoding="utf-8")
    done = perplexity_cli(trained_run, "--data", str(path), "--json", "--precision", "bf16")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    fp32 = Scorer(trained_run).score_text(text)
    assert record["tokens"] == fp32.tokens
    assert math.isfinite(record["loss_nats_per_token"])
    assert abs(record["loss_nats_per_token"] - fp32.loss) < 1e-2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lanes", "0"], "--lanes"),
        (["--window", "0"], "--window"),
        (["--field", "text"], "--field"),
        (["--per-line"], "--per-line"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_cli_bad_options_are_one_line_errors(trained_run, tmp_path, args, needle):
    path = tmp_path / "text.txt"
    path.write_text("the cat\n", encoding="utf-8")
    data = [] if args == ["--per-line"] else ["--data", str(path)]
    result = invoke("perplexity", str(trained_run), *data, *args)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    error = assert_user_error(result)
    assert needle in error
    assert result.stdout == ""


def test_cli_missing_run_dir_is_a_one_line_error(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the cat\n", encoding="utf-8")
    result = invoke("perplexity", str(tmp_path / "no-such-run"), "--data", str(path), "--threads", "1")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    error = assert_user_error(result)
    assert "no-such-run" in error


def test_scorer_rejects_bad_lanes_and_window_and_a_model_without_tokenizer():
    model = uniform_model(4)
    with pytest.raises(CharlmError, match="^lanes must be at least 1"):
        Scorer(model, alphabet_tokenizer(), lanes=0)
    with pytest.raises(CharlmError, match="^window must be at least 1"):
        Scorer(model, alphabet_tokenizer(), window=0)
    with pytest.raises(CharlmError):
        Scorer(model)
    with pytest.raises(CharlmError):
        Scorer(model, alphabet_tokenizer()).score_split("val")


# ---------------------------------------------------------------------------------------
# TextCounter


def count(chunks: Sequence[str]) -> tuple[int, int, int]:
    counter = TextCounter()
    for chunk in chunks:
        counter.add(chunk)
    return counter.chars, counter.bytes, counter.words


@pytest.mark.parametrize(
    "chunks, words",
    [
        (["hel", "lo wor", "ld"], 2),  # words split between chunks count once
        (["hello ", "world"], 2),  # whitespace at the end of a chunk
        (["hello", " world"], 2),  # whitespace at the start of the next
        (["hello", "\n", "world"], 2),
        (["a", "", "b"], 1),  # an empty chunk does not end a word
        (["  ", "a", " ", "b  "], 2),
        (["   ", "\n\t"], 0),
        (["x"] * 5, 1),
        (["\u00e9t", "\u00e9\u3000\u4e2d", "\u6587"], 2),  # ideographic space separates words
        (["a\u00a0", "b"], 2),  # so does a no-break space
    ],
)
def test_text_counter_counts_words_across_chunk_boundaries(chunks, words):
    text = "".join(chunks)
    assert count(chunks) == (len(text), len(text.encode("utf-8")), words)
    assert len(text.split()) == words


def test_text_counter_is_independent_of_how_a_text_is_cut():
    rng = random.Random(14)
    text = multiscript_text(40, seed=14) + "  tail  words\t\n"
    expected = sizes(text)
    assert count([text]) == expected
    assert count(list(text)) == expected
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), 12))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert count(chunks) == expected
