"""Text generation: charlm.inference.generate (Generator, StopScanner), charlm.inference.stepper, charlm.inference.utf8,
charlm.inference.sampling and the `charlm generate` command, on real models trained here.

Covered here:
  * greedy decoding (deterministic, the same as temperature 0, the same as a reference loop
    that feeds nn.LSTM one token at a time), seeds (same seed, same text; different seeds,
    different text; no seed, fresh randomness);
  * next_token on real logits and on hand-made distributions: top-k never leaves the k most
    likely tokens and is clamped to the vocabulary, top-p keeps exactly the smallest set with
    mass >= p (one more token once p passes a cumulative boundary), and temperature, top-k and
    top-p combine in that order;
  * invalid values: CharlmError from the API, one "charlm: error:" line and a non-zero exit
    from the CLI;
  * the Stepper on a trained model: priming on the prompt in one pass gives the same state as
    stepping through it (its step-by-step match with nn.LSTM / nn.GRU / nn.RNN for every
    cell is in test_stepper.py);
  * streaming equals the non-streamed result (one sample and per sample of a batch), two
    threads sharing one Generator each get their own samples, batches
    (distinct samples, reproducible per index), prompt characters the model never saw (named,
    left out, warned about on stderr) and the unknown id never emitted, the empty prompt for
    char, byte and SentencePiece models, stop strings (API, StopScanner across chunks, CLI
    with backslash escapes);
  * the CLI: text alone on stdout (prompt, continuation, sample separators), notices on
    stderr, --json records, the `python generate.py` shim, --checkpoint best / last / missing;
  * UTF-8: byte-level and SentencePiece models trained on multi-script text (a slice of
    udhr_multiscript.txt when present, and an inline multi-script text that always runs) only
    ever produce valid UTF-8, streamed chunk by chunk; and the Utf8Guard automaton directly.

Every model is tiny (one layer of 32 units, fp32, CPU) and trained once per module with the
real Trainer into a real run directory; the CLI runs as real subprocesses (CliRunner only for
error cases).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

import pytest
import torch
from helpers import MODEL_DEFAULTS, assert_user_error, invoke, multiscript_text, run_cli, train_tiny_run, udhr_slice

from charlm.config import ModelConfig, SampleConfig
from charlm.errors import CharlmError, OptionError
from charlm.inference.generate import Generator, SampleResult, StopScanner
from charlm.inference.sampling import next_token
from charlm.inference.utf8 import REJECT, Utf8Guard, needs_guard
from charlm.models.rnnlm import RNNLM
from charlm.runs.directory import BEST, LAST, RunDirectory
from charlm.text.tokenizer import ByteTokenizer, CharTokenizer

CPU = torch.device("cpu")
REPLACEMENT = "\ufffd"
PROMPT = "KING:\nThe king said"


# ---------------------------------------------------------------------------------------
# corpora and training


WORDS = (
    "the king said that a small bird sang over green hills while old men slept by "
    "the river and night came slowly to all of them"
).split()
SPEAKERS = ("KING", "QUEEN", "BIRD", "RIVER")


def play_text(chars: int, seed: int = 0) -> str:
    """A few KB of play-like ASCII text: speaker lines, short sentences, blank lines between
    speeches (so "\\n\\n" is common and a stop string can find it)."""
    rng = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < chars:
        speech = [rng.choice(SPEAKERS) + ":\n"]
        for _ in range(rng.randint(1, 3)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
            speech.append(" ".join(words).capitalize() + rng.choice(".,!?") + "\n")
        speech.append("\n")
        block = "".join(speech)
        out.append(block)
        length += len(block)
    return "".join(out)


def train_run(
    root: Path,
    text: str,
    tokenizer: str = "char",
    vocab_size: int = 2000,
    steps: int = 250,
    seq_len: int = 32,
    seed: int = 0,
) -> Path:
    """Train a tiny LSTM with the real Trainer into root/run (config, tokenizer, checkpoints)."""
    return train_tiny_run(root, text, tokenizer=tokenizer, vocab_size=vocab_size, batch_size=8, seq_len=seq_len,
                          lr=1e-2, warmup_steps=10, max_steps=steps, eval_every=steps, checkpoint_every=10_000,
                          log_every=50, eval_batch_size=4, seed=seed)  # fmt: skip


def stream_text(result):
    """The text chunks of a one-sample Generation, as they are made."""
    for index, text in result:
        assert index == 0
        yield text


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    """A char-level LSTM (hidden 32) trained for 250 steps on ~8 KB of play-like text."""
    return train_run(tmp_path_factory.mktemp("char"), play_text(8000), "char", steps=250)


@pytest.fixture(scope="module")
def char_gen(char_run) -> Generator:
    return Generator(char_run)


MULTISCRIPT_SOURCES = ("inline", "udhr")


@pytest.fixture(scope="module")
def multiscript_runs(tmp_path_factory):
    """Byte-level and SentencePiece models per multi-script source, trained on first use."""
    cache: dict[tuple[str, str], Path] = {}

    def get(source: str, tokenizer: str) -> Path:
        key = (source, tokenizer)
        if key not in cache:
            if source == "udhr":
                text = udhr_slice(windows=60, size=2000)
                steps = 100
            else:
                text = multiscript_text(900)
                steps = 80
            root = tmp_path_factory.mktemp(f"{source}-{tokenizer}")
            vocab = 500 if source == "udhr" else 400
            cache[key] = train_run(root, text, tokenizer, vocab_size=vocab, steps=steps, seq_len=48)
        return cache[key]

    return get


# ---------------------------------------------------------------------------------------
# helpers


def cfg(temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None) -> SampleConfig:
    return SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p)


GREEDY = SampleConfig(temperature=0.0)


def reference_greedy(model: RNNLM, tokenizer, prompt: str, n: int) -> str:
    """Greedy decoding the slow, obvious way: nn.LSTM fed one token at a time."""
    unk = tokenizer.unk_id
    ids = [i for i in tokenizer.encode(prompt).tolist() if i != unk]
    out = []
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]))
        for _ in range(n):
            last = logits[0, -1].clone()
            if unk is not None:
                last[unk] = float("-inf")
            token = int(last.argmax())
            out.append(token)
            logits, state = model(torch.tensor([[token]]), state)
    return tokenizer.decode(out)


def run_generate(*args: str, shim: bool = False) -> tuple[int, str, str]:
    """`python -m charlm generate ARGS` (or `python generate.py ARGS`) in a real subprocess."""
    done = run_cli("generate", *args, how="shim" if shim else "module", timeout=120)
    return done.returncode, done.stdout, done.stderr


def printed(prompt: str, text: str) -> str:
    """What the CLI prints for one sample: prompt, continuation, a final newline if missing."""
    body = prompt + text
    return body if body.endswith("\n") else body + "\n"


def last_logits(gen: Generator, prompt: str) -> torch.Tensor:
    ids = torch.tensor([gen.tokenizer.encode(prompt).tolist()])
    with torch.no_grad():
        logits, _ = gen.model(ids)
    return logits[0, -1].float()


def draw(logits: torch.Tensor, config: SampleConfig, rows: int = 4000, seed: int = 0) -> torch.Tensor:
    """rows independent draws from one logits vector (a batch of identical rows)."""
    generator = torch.Generator().manual_seed(seed)
    return next_token(logits.expand(rows, -1), config, generator)


# probabilities chosen so every cumulative boundary (0.4, 0.7, 0.85, 0.95) is far from the
# p values tested; placed in a shuffled order so the scatter back to vocabulary order matters
HAND_PROBS = [0.4, 0.3, 0.15, 0.1, 0.05]
HAND_ORDER = [3, 0, 6, 1, 4]  # HAND_PROBS[r] sits at vocabulary index HAND_ORDER[r]
HAND_V = 7  # indices 2 and 5 have probability 0


def hand_logits() -> torch.Tensor:
    logits = torch.full((HAND_V,), float("-inf"))
    for p, index in zip(HAND_PROBS, HAND_ORDER):
        logits[index] = math.log(p)
    return logits


def expected_set(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> set[int]:
    """The tokens temperature -> top-k -> top-p leaves, worked out on HAND_PROBS (sorted)."""
    weights = [p ** (1.0 / temperature) for p in HAND_PROBS]
    if top_k is not None:
        weights = weights[:top_k]
    total = sum(weights)
    kept, mass = [], 0.0
    for rank, w in enumerate(weights):
        kept.append(HAND_ORDER[rank])
        mass += w / total
        if top_p is not None and mass >= top_p:
            break
    return set(kept)


# ---------------------------------------------------------------------------------------
# greedy, seeds


def test_greedy_is_deterministic_and_equals_temperature_zero(char_gen):
    first = char_gen.generate(PROMPT, 120, config=GREEDY, seed=1).text
    second = char_gen.generate(PROMPT, 120, config=GREEDY, seed=2).text  # the seed plays no part
    assert first == second
    assert len(first) == 120
    # temperature 0 ignores top-k / top-p
    assert char_gen.generate(PROMPT, 120, config=cfg(0.0, top_k=5, top_p=0.5), seed=3).text == first
    # a greedy batch is the greedy sample repeated
    assert char_gen.generate(PROMPT, 120, num_samples=3, config=GREEDY).texts == [first] * 3


def test_greedy_matches_a_reference_loop_over_nn_lstm(char_gen):
    expected = reference_greedy(char_gen.model, char_gen.tokenizer, PROMPT, 150)
    assert char_gen.generate(PROMPT, 150, config=GREEDY).text == expected


def test_same_seed_same_text_and_different_seeds_differ(char_gen):
    a = char_gen.generate(PROMPT, 200, config=cfg(1.0), seed=11).text
    b = char_gen.generate(PROMPT, 200, config=cfg(1.0), seed=11).text
    c = char_gen.generate(PROMPT, 200, config=cfg(1.0), seed=12).text
    assert a == b
    assert a != c
    assert len(set(a)) > 5, f"the model is degenerate: {a!r}"
    # no seed: fresh randomness each call
    assert char_gen.generate(PROMPT, 200, config=cfg(1.0)).text != char_gen.generate(PROMPT, 200, config=cfg(1.0)).text


def test_generator_from_a_model_needs_its_tokenizer(char_gen):
    with pytest.raises(CharlmError, match="tokenizer"):
        Generator(char_gen.model)
    again = Generator(char_gen.model, char_gen.tokenizer)
    assert again.checkpoint is None
    assert again.generate(PROMPT, 60, config=GREEDY).text == char_gen.generate(PROMPT, 60, config=GREEDY).text


# ---------------------------------------------------------------------------------------
# next_token: top-k, top-p, temperature


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_draws_only_from_the_k_most_likely(char_gen, k):
    logits = last_logits(char_gen, PROMPT)
    allowed = set(torch.topk(logits, k).indices.tolist())
    drawn = draw(logits, cfg(2.0, top_k=k), rows=4000, seed=k)
    seen = set(drawn.tolist())
    assert seen <= allowed, f"drew {sorted(seen - allowed)} outside the top {k}"
    if k == 1:
        assert seen == {int(logits.argmax())}
    else:
        assert len(seen) >= 2, "top-k sampling collapsed to one token"
    # without top-k, the same draws leave the top k (the filter is what keeps them in)
    unfiltered = set(draw(logits, cfg(2.0), rows=4000, seed=k).tolist())
    assert unfiltered - allowed


def test_top_k_larger_than_the_vocabulary_is_clamped(char_gen):
    logits = last_logits(char_gen, PROMPT)
    V = logits.shape[-1]
    plain = draw(logits, cfg(1.0), seed=5)
    for k in (V, V + 1, V + 1000):
        assert torch.equal(draw(logits, cfg(1.0, top_k=k), seed=5), plain)
    text = char_gen.generate(PROMPT, 80, config=cfg(1.0, top_k=100_000), seed=5).text
    assert text == char_gen.generate(PROMPT, 80, config=cfg(1.0), seed=5).text


@pytest.mark.parametrize(
    "top_p, count",
    [(0.3, 1), (0.39, 1), (0.41, 2), (0.69, 2), (0.705, 3), (0.84, 3), (0.86, 4), (0.94, 4), (0.96, 5), (1.0, 5)],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, count):
    drawn = set(draw(hand_logits(), cfg(1.0, top_p=top_p), rows=4000, seed=1).tolist())
    assert drawn == set(HAND_ORDER[:count])
    assert drawn == expected_set(1.0, None, top_p)


def test_top_p_boundary_lets_in_exactly_one_more_token():
    below = set(draw(hand_logits(), cfg(1.0, top_p=0.7 - 1e-3), seed=2).tolist())
    above = set(draw(hand_logits(), cfg(1.0, top_p=0.7 + 1e-3), seed=2).tolist())
    assert below == {HAND_ORDER[0], HAND_ORDER[1]}
    assert above == below | {HAND_ORDER[2]}


def test_top_p_frequencies_follow_the_renormalised_probabilities():
    drawn = draw(hand_logits(), cfg(1.0, top_p=0.8), rows=20_000, seed=3).tolist()
    counts = Counter(drawn)
    assert set(counts) == set(HAND_ORDER[:3])
    mass = sum(HAND_PROBS[:3])
    for rank in range(3):
        frequency = counts[HAND_ORDER[rank]] / len(drawn)
        assert abs(frequency - HAND_PROBS[rank] / mass) < 0.02, (rank, frequency)


@pytest.mark.parametrize(
    "temperature, top_k, top_p, count",
    [
        (2.0, 4, 0.7, 3),  # flatter after temperature: three tokens needed for 0.7
        (1.0, 4, 0.7, 2),  # same filters at temperature 1: two suffice
        (2.0, 2, 0.7, 2),  # top-k first, then top-p on what is left
        (2.0, 4, 0.9, 4),
        (0.5, None, 0.7, 2),  # sharper: 0.4^2 / sum = 0.54, then 0.84
        (0.5, 3, 0.5, 1),
    ],
)
def test_temperature_top_k_and_top_p_combine(temperature, top_k, top_p, count):
    expected = expected_set(temperature, top_k, top_p)
    assert len(expected) == count  # the worked example
    drawn = set(draw(hand_logits(), cfg(temperature, top_k, top_p), rows=4000, seed=4).tolist())
    assert drawn == expected


def test_all_three_filters_together_on_the_model(char_gen):
    config = cfg(0.9, top_k=8, top_p=0.9)
    a = char_gen.generate(PROMPT, 150, config=config, seed=21).text
    assert len(a) == 150
    assert a == char_gen.generate(PROMPT, 150, config=config, seed=21).text
    assert REPLACEMENT not in a


# ---------------------------------------------------------------------------------------
# invalid values


@pytest.mark.parametrize(
    "config, option",
    [
        (cfg(-0.5), "temperature"),
        (cfg(1.0, top_p=0.0), "top_p"),
        (cfg(1.0, top_p=1.5), "top_p"),
        (cfg(1.0, top_k=0), "top_k"),
        (cfg(1.0, top_k=-3), "top_k"),
    ],
)
def test_invalid_sample_config_raises(char_gen, config, option):
    # when called, before anything streams; the library names the field, the CLI its flag
    with pytest.raises(OptionError, match=f"^{option} ") as info:
        char_gen.generate(PROMPT, 10, config=config, seed=0)
    assert info.value.option == option


def test_invalid_counts_raise(char_gen):
    with pytest.raises(OptionError, match="^num_samples must be at least 1"):
        char_gen.generate(PROMPT, 10, num_samples=0)
    with pytest.raises(OptionError, match="^max_tokens must be 0 or more"):
        char_gen.generate(PROMPT, -1)
    # zero tokens is allowed: nothing generated, finish "length"
    assert char_gen.generate(PROMPT, 0, config=GREEDY).samples == [SampleResult("", 0, "length")]


def test_infinite_temperature_is_rejected(char_gen, char_run):
    # inf passes "0 or more" but turns every logit into 0 or nan: it must be refused up front
    with pytest.raises(CharlmError, match="temperature"):
        char_gen.generate(PROMPT, 10, config=cfg(float("inf")), seed=0)
    result = invoke("generate", str(char_run), "--prompt", "x", "--temperature", "inf")
    assert isinstance(result.exception, SystemExit), f"the CLI raised {result.exception!r}"
    assert "--temperature" in assert_user_error(result)


def test_tiny_temperature_is_greedy_not_a_crash(char_gen):
    # T -> 0 is greedy; logits / T overflowing float32 must not turn into nan probabilities
    logits = last_logits(char_gen, PROMPT)
    for temperature in (1e-6, 1e-30, 1e-45):
        drawn = draw(logits, cfg(temperature), rows=50, seed=1)
        assert set(drawn.tolist()) == {int(logits.argmax())}, temperature
    assert (
        char_gen.generate(PROMPT, 60, config=cfg(1e-45), seed=1).text
        == char_gen.generate(PROMPT, 60, config=GREEDY).text
    )


def test_cli_seed_out_of_range_is_a_user_error(char_run):
    result = invoke("generate", str(char_run), "--prompt", "x", "-n", "5", "--seed", str(2**64))
    assert isinstance(result.exception, SystemExit), f"the CLI raised {result.exception!r}"
    assert result.exit_code != 0
    assert result.stdout == ""
    assert_user_error(result, "--seed", alone=False)


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "0"], "--top-k"),
        (["--num-samples", "0"], "--num-samples"),
        (["-N", "0"], "--num-samples"),
        (["--max-tokens", "-1"], "--max-tokens"),
        (["--stop", ""], "--stop"),
        (["--prompt", "x", "--prompt-file", "PROMPT_FILE"], "--prompt-file"),
        (["--prompt-file", "MISSING"], "no such file"),
        (["--prompt-file", "LATIN1_FILE"], "not UTF-8"),
    ],
)
def test_cli_invalid_values_give_one_error_line(char_run, tmp_path, options, needle):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("KING:\n", encoding="utf-8")
    latin1_file = tmp_path / "latin1.txt"
    latin1_file.write_bytes("KING: café\n".encode("latin-1"))
    paths = {"PROMPT_FILE": str(prompt_file), "MISSING": str(tmp_path / "missing.txt"), "LATIN1_FILE": str(latin1_file)}
    options = [paths.get(o, o) for o in options]
    result = invoke("generate", str(char_run), *options)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    line = assert_user_error(result)
    assert needle in line


def test_cli_missing_run_dir(tmp_path):
    missing = tmp_path / "no-such-run"
    result = invoke("generate", str(missing), "--prompt", "x")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    line = assert_user_error(result)
    assert "no-such-run" in line


def test_cli_prompt_file_is_read(char_run, char_gen, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT, encoding="utf-8")
    result = invoke(
        "generate", str(char_run), "--prompt-file", str(prompt_file), "--greedy", "-n", "40", "--threads", "1"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(PROMPT, char_gen.generate(PROMPT, 40, config=GREEDY).text)


# ---------------------------------------------------------------------------------------
# the Stepper


def test_prompt_priming_in_one_pass_equals_stepping_through_it(char_gen):
    model, stepper = char_gen.model, char_gen.stepper
    ids = torch.tensor(char_gen.tokenizer.encode(PROMPT * 3).tolist())
    with torch.no_grad():
        logits, primed = model(ids[None])
    state = stepper.from_model_state(model.init_state(1))
    for token in ids:
        step_logits, state = stepper.step(token.view(1), state)
    stepped = stepper.to_model_state(state)
    assert isinstance(primed, tuple) and isinstance(stepped, tuple)  # LSTM: (h, c)
    for ours, theirs in zip(stepped, primed):
        assert ours.shape == theirs.shape == (1, 1, 32)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step_logits[0], logits[0, -1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "options",
    [dict(cell="gru", layers=2), dict(cell="rnn-tanh", layers=1), dict(cell="lstm", layers=2, tie_weights=True)],
    ids=["gru-2", "rnn-tanh", "lstm-2-tied"],
)
def test_generator_batches_every_cell_like_the_reference_loop(char_gen, options):
    torch.manual_seed(5)
    config = ModelConfig(vocab_size=char_gen.tokenizer.vocab_size, hidden=24, embed=12, dropout=0.0, **options)
    model = RNNLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0)  # sharper logits: greedy choices far from ties
    gen = Generator(model, char_gen.tokenizer)
    expected = reference_greedy(model, char_gen.tokenizer, PROMPT, 60)
    assert gen.generate(PROMPT, 60, num_samples=3, config=GREEDY).texts == [expected] * 3
    # sampled: the batch's state is each sample's own
    sampled = gen.generate(PROMPT, 60, num_samples=3, config=cfg(1.0), seed=2).texts
    assert len(set(sampled)) == 3
    assert gen.generate(PROMPT, 60, num_samples=3, config=cfg(1.0), seed=2).texts == sampled


# ---------------------------------------------------------------------------------------
# streaming and batches


def test_stream_equals_generate(char_gen):
    for config, seed in ((cfg(1.0), 5), (cfg(0.7, top_k=10), 6), (GREEDY, 0)):
        chunks = list(stream_text(char_gen.generate(PROMPT, 200, config=config, seed=seed)))
        assert len(chunks) > 1, "the text did not stream"
        assert all(isinstance(c, str) and c for c in chunks)
        assert "".join(chunks) == char_gen.generate(PROMPT, 200, config=config, seed=seed).text


def test_streamed_chunks_per_index_equal_the_finished_samples(char_gen):
    per_sample: dict[int, list[str]] = defaultdict(list)
    result = char_gen.generate(PROMPT, 150, num_samples=3, config=cfg(1.0), seed=9)
    assert not result.done
    for index, text in result:
        per_sample[index].append(text)
    assert result.done
    streamed = ["".join(per_sample[i]) for i in range(3)]
    assert set(per_sample) == {0, 1, 2}
    assert [r.text for r in result.samples] == streamed == result.texts
    assert list(result) == []  # a stream is read once; the finished values stay
    assert char_gen.generate(PROMPT, 150, num_samples=3, config=cfg(1.0), seed=9).texts == streamed


def test_threads_sharing_one_generator_each_get_their_own_samples(char_gen):
    # two calls on one loaded Generator, streamed in lockstep by two threads: each result must
    # be what the same call gives alone (a shared "last results" would mix them up)
    jobs = {"a": (PROMPT, 2, 41), "b": ("QUEEN:\n", 3, 42)}

    def call(name: str):
        prompt, num_samples, seed = jobs[name]
        return char_gen.generate(prompt, 150, num_samples=num_samples, config=cfg(1.0), seed=seed)

    alone = {name: call(name).samples for name in jobs}
    assert alone["a"] != alone["b"][:2]
    barrier = threading.Barrier(2, timeout=60)
    got: dict[str, list[SampleResult]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            result = call(name)
            barrier.wait()  # both calls made before either reads
            for step, _ in enumerate(result):
                if step < 50:
                    barrier.wait()  # both generations are mid-stream at the same time
            barrier.wait()  # both done before either reads its finished values
            got[name] = result.samples
        except BaseException as exc:  # reported below, from the test's own thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert got == alone
    assert [len(got[name]) for name in jobs] == [2, 3]


def test_batch_samples_differ_and_each_index_is_reproducible(char_gen):
    result = char_gen.generate(PROMPT, 120, num_samples=4, config=cfg(1.0), seed=33)
    first = result.texts
    assert len(first) == 4 and all(isinstance(t, str) and len(t) == 120 for t in first)
    assert len(set(first)) > 1, "the four samples of a batch are identical"
    assert [r.tokens for r in result.samples] == [120] * 4
    assert [r.finish for r in result.samples] == ["length"] * 4
    again = char_gen.generate(PROMPT, 120, num_samples=4, config=cfg(1.0), seed=33).texts
    for i in range(4):
        assert again[i] == first[i], f"sample {i} changed with the same seed and batch size"
    assert char_gen.generate(PROMPT, 120, num_samples=4, config=cfg(1.0), seed=34).texts != first


# ---------------------------------------------------------------------------------------
# prompts: unknown characters, empty prompt


def test_unknown_prompt_characters_are_named_and_left_out(char_gen):
    prompt = "KING:\nThe k@ing sa~id é"
    clean = "KING:\nThe king said "
    assert char_gen.unknown_in_prompt(prompt) == ["@", "~", "é"]
    assert char_gen.unknown_in_prompt(clean) == []
    assert char_gen.unknown_in_prompt("") == []
    for seed in (1, 2):
        assert (
            char_gen.generate(prompt, 100, config=cfg(1.0), seed=seed).text
            == char_gen.generate(clean, 100, config=cfg(1.0), seed=seed).text
        )
    # a prompt of unknown characters only is no prompt at all
    assert (
        char_gen.generate("@~é", 80, config=cfg(1.0), seed=3).text
        == char_gen.generate("", 80, config=cfg(1.0), seed=3).text
    )


def test_unknown_id_is_never_emitted(char_gen):
    # the trained model, very hot
    result = char_gen.generate(PROMPT, 500, num_samples=4, config=cfg(2.0), seed=4)
    for _, text in result:
        assert REPLACEMENT not in text
    assert all(r.tokens == 500 for r in result.samples)
    # an untrained model puts as much weight on the unknown id as on any other
    torch.manual_seed(0)
    fresh = RNNLM(ModelConfig(vocab_size=char_gen.tokenizer.vocab_size, **MODEL_DEFAULTS))
    untrained = Generator(fresh, char_gen.tokenizer)
    texts = untrained.generate("", 500, num_samples=4, config=cfg(2.0), seed=5).texts
    assert len(set("".join(texts))) > 10
    assert all(REPLACEMENT not in t and len(t) == 500 for t in texts)


@pytest.mark.parametrize("kind", ["char", "byte", "sentencepiece"])
def test_empty_prompt_starts_from_a_newline(kind, char_gen, multiscript_runs):
    gen = char_gen if kind == "char" else Generator(multiscript_runs("inline", kind))
    assert gen.tokenizer.kind == kind
    result = gen.generate("", 60, config=cfg(1.0), seed=8)
    text = result.text
    assert text, "nothing generated from an empty prompt"
    assert text == gen.generate("\n", 60, config=cfg(1.0), seed=8).text
    assert "".join(stream_text(gen.generate("", 60, config=cfg(1.0), seed=8))) == text
    assert result.samples[0].tokens == 60


def test_empty_prompt_without_a_newline_in_the_vocabulary():
    # no "\n": start after a space; neither: start from the first known symbol
    for alphabet, start in (("ab c", " "), ("abc", "a")):
        tokenizer = CharTokenizer(ord(ch) for ch in alphabet)
        torch.manual_seed(0)
        gen = Generator(RNNLM(ModelConfig(vocab_size=tokenizer.vocab_size, **MODEL_DEFAULTS)), tokenizer)
        text = gen.generate("", 40, config=cfg(1.0), seed=1).text
        assert len(text) == 40 and set(text) <= set(alphabet)
        assert text == gen.generate(start, 40, config=cfg(1.0), seed=1).text


# ---------------------------------------------------------------------------------------
# stop strings


def test_stop_string_ends_the_sample_at_its_first_occurrence(char_gen):
    whole = char_gen.generate(PROMPT, 300, config=cfg(1.0), seed=2)
    full = whole.text
    assert whole.samples[0].finish == "length"
    stop = "\n\n" if "\n\n" in full else " the"
    assert stop in full, full
    cut = full.index(stop)
    result = char_gen.generate(PROMPT, 300, config=cfg(1.0), seed=2, stop=[stop]).samples[0]
    text = result.text
    assert text == full[:cut]
    assert stop not in text
    assert result.finish == "stop"
    assert result.text == text
    assert result.tokens == cut + len(stop)  # one token per character; nothing after the stop
    # the streamed text stops at the same place
    assert "".join(stream_text(char_gen.generate(PROMPT, 300, config=cfg(1.0), seed=2, stop=[stop]))) == text


def test_the_earliest_of_several_stop_strings_wins(char_gen):
    full = char_gen.generate(PROMPT, 300, config=cfg(1.0), seed=2).text
    stops = ["\n\n", "."]
    assert all(s in full for s in stops)
    cut = min(full.index(s) for s in stops)
    assert cut > 0
    for order in (stops, stops[::-1]):
        (result,) = char_gen.generate(PROMPT, 300, config=cfg(1.0), seed=2, stop=order).samples
        assert result.text == full[:cut]
        assert result.finish == "stop"


def test_without_a_hit_the_sample_runs_to_max_tokens(char_gen):
    full = char_gen.generate(PROMPT, 150, config=cfg(1.0), seed=2).text
    (result,) = char_gen.generate(PROMPT, 150, config=cfg(1.0), seed=2, stop=["@@", "zzzzzz"]).samples
    assert result.text == full
    assert result.finish == "length"
    assert result.tokens == 150


def test_stop_strings_end_each_sample_of_a_batch_on_its_own(char_gen):
    full = char_gen.generate(PROMPT, 200, num_samples=4, config=cfg(1.0), seed=7).texts
    samples = char_gen.generate(PROMPT, 200, num_samples=4, config=cfg(1.0), seed=7, stop=["\n\n"]).samples
    stopped = [r.text for r in samples]
    for i in range(4):
        result = samples[i]
        if "\n\n" in full[i]:
            assert stopped[i] == full[i][: full[i].index("\n\n")]
            assert result.finish == "stop" and result.tokens == len(stopped[i]) + 2
        else:
            assert stopped[i] == full[i]
            assert result.finish == "length" and result.tokens == 200
    assert any(r.finish == "stop" for r in samples), "no sample reached the stop string"


def test_stop_scanner_catches_a_stop_split_across_chunks():
    scanner = StopScanner(["bc"])
    assert scanner.push("ab") == ("a", False)  # "b" might begin the stop: held back
    assert scanner.push("c") == ("", True)

    scanner = StopScanner(["xyz"])
    assert scanner.push("12x") == ("12", False)
    assert scanner.push("y") == ("", False)
    assert scanner.push("z!") == ("", True)

    # a held-back tail that turns out not to be a stop is released
    scanner = StopScanner(["bc"])
    assert scanner.push("ab") == ("a", False)
    assert scanner.push("d") == ("bd", False)
    assert scanner.push("b") == ("", False)
    assert scanner.flush() == "b"

    # the earliest stop string wins; empty stop strings are ignored
    assert StopScanner(["cd", "b"]).push("abcd") == ("a", True)
    assert StopScanner([""]).push("abc") == ("abc", False)
    assert StopScanner(["\n\n"]).push("one\n") == ("one", False)


# ---------------------------------------------------------------------------------------
# the CLI, end to end


@pytest.mark.slow
def test_cli_greedy_flag_equals_temperature_zero(char_run, char_gen):
    common = [str(char_run), "--prompt", PROMPT, "-n", "80", "--threads", "1"]
    rc_g, out_g, err_g = run_generate(*common, "--greedy", "--seed", "1")
    rc_t, out_t, err_t = run_generate(*common, "--temperature", "0", "--seed", "2")
    assert rc_g == 0, err_g
    assert rc_t == 0, err_t
    assert out_g == out_t
    assert out_g == printed(PROMPT, char_gen.generate(PROMPT, 80, config=GREEDY).text)


@pytest.mark.slow
def test_cli_json_and_plain_text_with_the_same_seed(char_run, char_gen):
    common = [str(char_run), "--prompt", PROMPT, "-n", "90", "-N", "2", "--seed", "7",
              "--temperature", "1", "--threads", "1"]  # fmt: skip
    rc_j, out_j, err_j = run_generate(*common, "--json")
    rc_p, out_p, err_p = run_generate(*common)
    assert rc_j == 0, err_j
    assert rc_p == 0, err_p

    records = [json.loads(line) for line in out_j.splitlines()]
    assert len(records) == 2
    expected = char_gen.generate(PROMPT, 90, num_samples=2, config=cfg(1.0), seed=7).texts
    for index, record in enumerate(records):
        assert set(record) == {"sample", "prompt", "text", "tokens", "finish", "seed"}
        assert record["sample"] == index
        assert record["prompt"] == PROMPT
        assert record["seed"] == 7
        assert record["tokens"] == 90
        assert record["finish"] == "length"
        assert record["text"] == expected[index]  # same seed, same text as the API
    assert expected[0] != expected[1]

    # plain text: only the prompt, the continuations and the separators on stdout
    assert out_p == (
        "--- sample 1 of 2 ---\n" + printed(PROMPT, expected[0])
        + "\n--- sample 2 of 2 ---\n" + printed(PROMPT, expected[1])
    )  # fmt: skip
    # notices on stderr, none of the text
    for err in (err_p, err_j):
        assert "checkpoint of" in err and "seed 7" in err
        assert expected[0][:40] not in err
        assert "Traceback" not in err


@pytest.mark.slow
def test_cli_without_seed_reports_one_that_reproduces_the_text(char_run, char_gen):
    rc, out, err = run_generate(str(char_run), "--prompt", PROMPT, "-n", "70", "--temperature", "1", "--json",
                                "--threads", "1")  # fmt: skip
    assert rc == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert f"seed {record['seed']}" in err
    assert record["text"] == char_gen.generate(PROMPT, 70, config=cfg(1.0), seed=record["seed"]).text


@pytest.mark.slow
def test_cli_stop_reads_backslash_escapes(char_run, char_gen):
    (sample,) = char_gen.generate(PROMPT, 300, config=cfg(1.0), seed=2, stop=["\n\n"]).samples
    expected = sample.text
    assert sample.finish == "stop"  # the seed reaches a blank line
    rc, out, err = run_generate(str(char_run), "--prompt", PROMPT, "-n", "300", "--seed", "2", "--temperature", "1",
                                "--stop", r"\n\n", "--json", "--threads", "1")  # fmt: skip
    assert rc == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["finish"] == "stop"
    assert record["text"] == expected
    assert "\n\n" not in PROMPT + record["text"]
    assert record["tokens"] < 300


@pytest.mark.slow
def test_cli_warns_about_unseen_prompt_characters(char_run, char_gen):
    prompt = "KING:\nThe k@ing said é"
    rc, out, err = run_generate(str(char_run), "--prompt", prompt, "-n", "60", "--seed", "3", "--threads", "1")
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert "'@'" in warnings[0] and "'é'" in warnings[0]
    assert out == printed(prompt, char_gen.generate(prompt, 60, config=SampleConfig(), seed=3).text)
    assert "warning" not in out


@pytest.mark.slow
def test_generate_shim_at_the_repository_root(char_run, char_gen):
    rc, out, err = run_generate(str(char_run), "--prompt", PROMPT, "--greedy", "-n", "50", "--threads", "1", shim=True)
    assert rc == 0, err
    assert out == printed(PROMPT, char_gen.generate(PROMPT, 50, config=GREEDY).text)
    assert "checkpoint of" in err


@pytest.fixture
def two_checkpoint_run(char_run, tmp_path) -> Path:
    """A copy of the char run whose best checkpoint holds other (untrained) weights."""
    copy = tmp_path / "run"
    shutil.copytree(char_run, copy)
    run = RunDirectory(copy)
    config = run.read_config()
    torch.manual_seed(123)
    run.save_checkpoint(BEST, RNNLM(config.model), {"step": 0, "val_loss": None})
    return copy


@pytest.mark.slow
def test_checkpoint_best_and_last_both_load(two_checkpoint_run):
    best = Generator(two_checkpoint_run, checkpoint="best")
    last = Generator(two_checkpoint_run, checkpoint="last")
    auto = Generator(two_checkpoint_run)
    assert (best.checkpoint, last.checkpoint, auto.checkpoint) == (BEST, LAST, BEST)
    text_best = best.generate(PROMPT, 60, config=GREEDY).text
    text_last = last.generate(PROMPT, 60, config=GREEDY).text
    assert text_best != text_last
    assert auto.generate(PROMPT, 60, config=GREEDY).text == text_best

    common = [str(two_checkpoint_run), "--prompt", PROMPT, "--greedy", "-n", "60", "--threads", "1"]
    for which, text in ((BEST, text_best), (LAST, text_last)):
        rc, out, err = run_generate(*common, "--checkpoint", which)
        assert rc == 0, err
        assert out == printed(PROMPT, text)
        assert f"{which} checkpoint of" in err


def test_missing_checkpoint_folder(two_checkpoint_run):
    shutil.rmtree(two_checkpoint_run / BEST)
    assert Generator(two_checkpoint_run).checkpoint == LAST  # auto falls back to last
    with pytest.raises(CharlmError, match="no best checkpoint"):
        Generator(two_checkpoint_run, checkpoint="best")
    result = invoke("generate", str(two_checkpoint_run), "--checkpoint", "best", "--prompt", "x")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    line = assert_user_error(result)
    assert "best" in line


# ---------------------------------------------------------------------------------------
# UTF-8: byte-level and SentencePiece models on multi-script text


@pytest.mark.parametrize("tokenizer", ["byte", "sentencepiece"])
@pytest.mark.parametrize("source", MULTISCRIPT_SOURCES)
def test_multiscript_models_generate_valid_utf8(source, tokenizer, multiscript_runs):
    gen = Generator(multiscript_runs(source, tokenizer))
    assert gen.tokenizer.kind == tokenizer
    assert gen.guard is not None, "byte-level tokens need the UTF-8 guard"
    samples: list[str] = []
    for seed, prompt in ((1, ""), (2, "Статья 1\n"), (3, "中文：")):
        per_sample: dict[int, list[str]] = defaultdict(list)
        result = gen.generate(prompt, 300, num_samples=2, config=cfg(1.5), seed=seed)
        for index, chunk in result:
            assert isinstance(chunk, str) and chunk
            chunk.encode("utf-8")  # strict: no lone surrogates in any chunk
            assert REPLACEMENT not in chunk
            per_sample[index].append(chunk)
        assert [r.tokens for r in result.samples] == [300, 300]
        for index in range(2):
            text = "".join(per_sample[index])
            assert text == result.samples[index].text
            assert text.encode("utf-8").decode("utf-8") == text
            samples.append(text)
    everything = "".join(samples)
    assert any(ord(ch) > 0x7F for ch in everything), "no multi-byte characters: the test proves nothing"
    if tokenizer == "byte":
        # several hundred bytes per sample actually came out as text
        assert all(len(s.encode("utf-8")) > 150 for s in samples)


def test_utf8_guard_automaton():
    guard = Utf8Guard(ByteTokenizer().token_bytes(), CPU)

    def allowed_after(*prefix: int) -> set[int]:
        states = guard.initial(1)
        for byte in prefix:
            assert not guard.mask(states)[0, byte], f"byte {byte:#x} refused after {prefix}"
            states = guard.advance(states, torch.tensor([byte]))
        return set((~guard.mask(states)[0]).nonzero().flatten().tolist())

    start = allowed_after()
    assert set(range(0x80)) <= start
    for byte in (0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xF8, 0xFF):
        assert byte not in start, f"{byte:#x} allowed at the start of a character"
    assert {0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4} <= start
    assert allowed_after(0xC3) == set(range(0x80, 0xC0))
    assert allowed_after(0xE2) == set(range(0x80, 0xC0))
    assert allowed_after(0xE0) == set(range(0xA0, 0xC0))  # no overlong forms
    assert allowed_after(0xED) == set(range(0x80, 0xA0))  # no surrogates
    assert allowed_after(0xF0) == set(range(0x90, 0xC0))
    assert allowed_after(0xF4) == set(range(0x80, 0x90))  # nothing above U+10FFFF
    assert allowed_after(0xE2, 0x82) == set(range(0x80, 0xC0))
    assert allowed_after(0xE2, 0x82, 0xAC) == start  # "€" is whole again
    assert allowed_after(0xF0, 0x9F, 0x98, 0x80) == start

    # per-sample states: a batch keeps each sample's place in its own character
    states = guard.advance(guard.initial(3), torch.tensor([0x41, 0xE0, 0xED]))
    mask = guard.mask(states)
    assert not mask[0, 0x41] and mask[0, 0x80]
    assert mask[1, 0x9F] and not mask[1, 0xA0]
    assert not mask[2, 0x9F] and mask[2, 0xA0]

    # multi-byte tokens (as SentencePiece pieces are) go through the automaton byte by byte
    pieces = [b"a", "é".encode(), b"\xc3", b"\xa9", b"\xa9a", b"\xe2\x82", "€".encode()[2:], b"\xff"]
    table = Utf8Guard(pieces, CPU).table
    assert table[0].tolist() == [0, 0, 1, REJECT, REJECT, 1, REJECT, REJECT]
    assert table[1].tolist()[3:5] == [0, 0]  # after C3: A9 closes it, A9 then "a" too


def test_needs_guard_only_for_tokens_that_split_characters():
    assert needs_guard(ByteTokenizer().token_bytes())
    assert not needs_guard(CharTokenizer([ord(c) for c in "abc é中😀\n"]).token_bytes())
    assert needs_guard([b"a", b"\xe4\xb8"])
