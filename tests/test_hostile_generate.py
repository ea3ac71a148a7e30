"""`charlm generate` and `charlm perplexity` used as a hostile user would.

Covered here, against a tiny run trained for real:
  * prompts with control characters (NUL, ESC sequences, carriage returns, bidi overrides,
    lone combining marks) do not crash, and no such character reaches stderr: notices name
    them as U+XXXX, and file names in notices and errors are escaped too;
  * --prompt-file that is binary, not UTF-8, a folder, missing, endless (/dev/zero) or empty;
  * enormous, negative and zero --max-tokens and --num-samples: fixed limits (MAX_TOKENS,
    MAX_SAMPLES) and a batch that cannot fit in memory are refused before anything is
    printed, in the CLI and in the library;
  * --top-k past the vocabulary, --top-p 0, non-finite or negative --temperature, --threads
    0 or enormous, --stop given only as escapes, empty or not UTF-8;
  * RUN_DIR that is a file, missing, an empty folder, or a run with no checkpoint yet;
  * perplexity --data: binary, invalid UTF-8 (strict and replace), empty, stdin empty or
    endless, --per-line --field on lines that are not JSON objects, a folder with no text,
    and a 10 MB single line, which must simply work;
  * a prompt longer than one priming window gives what a single pass over it gives.
Every error is one "charlm: error:" line, exit status 1 (2 for click's own usage errors),
nothing on stdout and no traceback.
"""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path
from typing import Optional

import pytest
import torch
from helpers import assert_user_error, invoke, numbered_lines, read_config, run_cli, train_tiny_run

from charlm.config import SampleConfig
from charlm.errors import CharlmError
from charlm.inference.generate import MAX_SAMPLES, MAX_TOKENS, PRIME_WINDOW, Generator
from charlm.runs.directory import RunDirectory

STEPS = 20
TEXT = numbered_lines(150)
# What must never reach a terminal from a notice: they would restyle, move or rewrite it.
TERMINAL_CONTROLS = ("\x1b", "\r", "\x00", "\x07", "\u202e", "\u0301", "\x9b")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A char-level LSTM (hidden 16) trained for STEPS steps; used read-only."""
    root = tmp_path_factory.mktemp("hostile-generate")
    return train_tiny_run(root, TEXT, model=dict(hidden=16, embed=8), batch_size=4, seq_len=16, warmup_steps=2,
                          max_steps=STEPS, eval_every=STEPS, eval_batch_size=2, checkpoint_every=STEPS,
                          log_every=STEPS)  # fmt: skip


@pytest.fixture(scope="module")
def generator(run) -> Generator:
    return Generator(run)


def generate(run: Path, *args: str):
    return invoke("generate", str(run), "--threads", "1", *args)


def perplexity(run: Path, *args: str, input: Optional[bytes] = None):
    return invoke("perplexity", str(run), "--threads", "1", *args, input=input)


# every error here is one line alone, exit 1 unless a call says status=2 (click's usage errors)
assert_error = functools.partial(assert_user_error, status=1)


def assert_clean_stderr(stderr: str) -> None:
    for ch in TERMINAL_CONTROLS:
        assert ch not in stderr, f"{ch!r} reached stderr: {stderr!r}"


# ---------------------------------------------------------------------------------------
# prompts


HOSTILE_PROMPTS = {
    "nul": "a\x00b",
    "csi-colour": "\x1b[31mred\x1b[0m",
    "osc-title": "\x1b]0;owned\x07",
    "c1-csi": "x\x9b2J",
    "carriage-return": "line\rover",
    "bidi-override": "abc\u202edef",
    "lone-combining-mark": "\u0301",
    "only-controls": "\x00\x01\x02\x1b",
}


@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS.values(), ids=HOSTILE_PROMPTS.keys())
def test_control_characters_in_the_prompt(prompt, run):
    result = generate(run, "--prompt", prompt, "-n", "8", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(prompt)  # the user's own prompt is echoed as given
    assert "warning: the model never saw" in result.stderr
    assert_clean_stderr(result.stderr)
    unseen = [ch for ch in prompt if ch not in TEXT]
    for ch in unseen:
        shown = f"U+{ord(ch):04X}" if not ch.isprintable() or ch == "\u0301" else repr(ch)
        assert shown in result.stderr, result.stderr


@pytest.mark.slow
def test_control_characters_in_a_real_process(run, tmp_path):
    """Through a real terminal-less process: stderr is clean bytes, the prompt comes back on stdout."""
    prompt = "".join(HOSTILE_PROMPTS.values())
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_bytes(prompt.encode("utf-8"))
    done = run_cli("generate", str(run), "--prompt-file", str(prompt_file), "-n", "5", "--seed", "3", "--threads", "1")
    assert done.returncode == 0, done.stderr
    stderr = done.stderr
    assert_clean_stderr(stderr)
    assert "U+0000" in stderr and "U+001B" in stderr  # the first ten, in code point order, are named
    assert done.stdout.startswith(prompt)


def test_json_output_keeps_the_prompt_exactly(run):
    prompt = HOSTILE_PROMPTS["csi-colour"] + HOSTILE_PROMPTS["bidi-override"]
    result = generate(run, "--prompt", prompt, "-n", "6", "-N", "2", "--json", "--seed", "2")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in records] == [prompt, prompt]
    assert "\x1b" not in result.stdout  # JSON writes control characters as \u escapes
    assert all(r["tokens"] == 6 for r in records)


def test_prompt_longer_than_a_priming_window_matches_one_pass(generator):
    """The prompt is primed PRIME_WINDOW tokens at a time; the state must be what one pass gives."""
    rng = random.Random(0)
    prompt = "".join(rng.choice("the quick brown fox ") for _ in range(PRIME_WINDOW * 2 + 123))
    assert set(prompt) <= set(TEXT)  # every character known: the ids are the plain encoding
    ids = torch.tensor([generator.tokenizer.encode(prompt).tolist()])
    with torch.inference_mode():
        logits, state = generator.model(ids)  # the reference: one pass
        out, expected = [], logits[0, -1]
        for _ in range(20):
            token = int(expected.masked_fill(torch.arange(len(expected)) == 0, float("-inf")).argmax())
            out.append(token)
            logits, state = generator.model(torch.tensor([[token]]), state)
            expected = logits[0, -1]
    reference = generator.tokenizer.decode(out)
    assert generator.generate(prompt, max_tokens=20, config=SampleConfig(temperature=0.0)).text == reference


# ---------------------------------------------------------------------------------------
# --prompt-file


def test_prompt_file_binary(run, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    assert_error(generate(run, "--prompt-file", str(path)), str(path), "is not UTF-8 (byte 0)")


def test_prompt_file_invalid_utf8(run, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    assert_error(generate(run, "--prompt-file", str(path)), str(path), "is not UTF-8 (byte 3)", "convert it")


def test_prompt_file_folder_missing_endless_and_empty(run, tmp_path):
    assert_error(generate(run, "--prompt-file", str(tmp_path)), "is a directory", status=2)
    assert_error(generate(run, "--prompt-file", str(tmp_path / "nope.txt")), "no such file")
    assert_error(generate(run, "--prompt-file", "/dev/zero"), "/dev/zero", "larger than 16 MiB")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    result = generate(run, "--prompt-file", str(empty), "-n", "5")
    assert result.exit_code == 0, result.stderr


def test_prompt_and_prompt_file_together(run, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("line", encoding="utf-8")
    assert_error(generate(run, "--prompt", "x", "--prompt-file", str(path)), "not both")


# ---------------------------------------------------------------------------------------
# counts


@pytest.mark.parametrize(
    "options,needle",
    [
        (["--max-tokens", str(10**30)], f"--max-tokens must be at most {MAX_TOKENS:,}"),
        (["--max-tokens", str(MAX_TOKENS + 1)], f"--max-tokens must be at most {MAX_TOKENS:,}"),
        (["--max-tokens", "-1"], "--max-tokens must be 0 or more"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--num-samples", "-3"], "--num-samples must be at least 1"),
        (["--num-samples", str(10**30)], f"--num-samples must be at most {MAX_SAMPLES:,}"),
        (["--num-samples", str(MAX_SAMPLES), "--max-tokens", str(MAX_TOKENS)], "needs about"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--temperature", "-inf"], "--temperature"),
        (["--temperature", "-1"], "--temperature"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--threads", "1000000"], "--threads 1000000 is more than"),
        (["--stop", ""], "--stop needs some text"),
        (["--stop", "\udcff"], "--stop"),
        (["--prompt", "ab\udcffcd"], "--prompt: character 2 is not valid UTF-8"),
    ],
)
def test_bad_generate_options(options, needle, run):
    # (--threads from click: invoke adds "--threads 1" first; the later value wins)
    assert_error(generate(run, *options), needle)


def test_batch_that_cannot_fit_names_the_memory_and_a_limit(run):
    line = assert_error(generate(run, "--num-samples", "999999", "--max-tokens", str(MAX_TOKENS)))
    assert "needs about" in line and "available" in line and "fit here" in line


def test_library_refuses_the_same_counts_when_called(generator):
    for num_samples, max_tokens, needle in [
        (1, MAX_TOKENS + 1, "max_tokens must be at most"),
        (MAX_SAMPLES + 1, 1, "num_samples must be at most"),
        (MAX_SAMPLES, MAX_TOKENS, "needs about"),
        (0, 1, "num_samples must be at least 1"),
    ]:
        with pytest.raises(CharlmError, match=needle):
            generator.generate("line", max_tokens, num_samples=num_samples)  # before any result exists


def test_zero_tokens_prints_only_the_prompt(run):
    result = generate(run, "--prompt", "line 1", "-n", "0")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "line 1\n"


def test_top_k_past_the_vocabulary_is_clamped(run):
    vocab = read_config(run)["model"]["vocab_size"]
    plain = generate(run, "--prompt", "line 1", "-n", "40", "--seed", "4")
    assert plain.exit_code == 0, plain.stderr
    for k in (vocab, vocab + 1, 10**6):  # all the same as no top-k at all: nothing to cut
        clamped = generate(run, "--prompt", "line 1", "-n", "40", "--seed", "4", "--top-k", str(k))
        assert clamped.exit_code == 0, clamped.stderr
        assert (clamped.stdout, clamped.stderr) == (plain.stdout, plain.stderr), k
    # and a top-k below the vocabulary does cut: top-k 1 is greedy, which this seed's sample is not
    greedy = generate(run, "--prompt", "line 1", "-n", "40", "--greedy")
    assert generate(run, "--prompt", "line 1", "-n", "40", "--seed", "4", "--top-k", "1").stdout == greedy.stdout
    assert plain.stdout != greedy.stdout


# each --stop as typed, and the text it stands for; ESC is a raw control character, not an escape
STOPS_AS_TYPED = {r"\n": "\n", "\\\\": "\\", r"\t": "\t", "\x1b": "\x1b", r"\r\n": "\r\n"}
ESCAPES_TEXT = "".join(f"line {i}:\tthe quick \\ brown\x1b fox\r\n" for i in range(150))


@pytest.fixture(scope="module")
def escapes_run(tmp_path_factory) -> Path:
    """A char LSTM trained on lines holding a tab, a backslash, ESC and CRLF, so that its
    samples reach every stop text above."""
    root = tmp_path_factory.mktemp("escapes")
    return train_tiny_run(root, ESCAPES_TEXT, model=dict(hidden=16, embed=8), batch_size=4, seq_len=16,
                          warmup_steps=2, max_steps=STEPS, eval_every=STEPS, eval_batch_size=2,
                          checkpoint_every=STEPS, log_every=STEPS)  # fmt: skip


@pytest.mark.parametrize("typed, stop", STOPS_AS_TYPED.items(), ids=["newline", "backslash", "tab", "esc", "crlf"])
def test_stop_given_only_as_escapes(typed, stop, escapes_run):
    def sample(seed: int, *stop_option: str):
        result = generate(escapes_run, "--prompt", "line 1", "-n", "120", "--seed", str(seed), *stop_option)
        assert result.exit_code == 0, result.stderr
        assert_clean_stderr(result.stderr)
        return result

    # a seed whose sample, left to run, reaches the stop text
    for seed in range(40):
        (free,) = map(json.loads, sample(seed, "--json").stdout.splitlines())
        if stop in free["text"]:
            break
    else:
        pytest.fail(f"no sample reached {stop!r}")
    (stopped,) = map(json.loads, sample(seed, "--json", "--stop", typed).stdout.splitlines())
    assert stopped["finish"] == "stop" and free["finish"] == "length"
    assert stopped["text"] == free["text"][: free["text"].index(stop)]  # ends where the stop text began
    assert stop not in stopped["text"]
    # as plain text: the prompt and the sample up to the stop, without it, ending in a newline
    body = "line 1" + stopped["text"]
    assert sample(seed, "--stop", typed).stdout == (body if body.endswith("\n") else body + "\n")


def test_stop_newline_ends_every_sample_before_a_newline(run):
    result = generate(run, "--stop", r"\n", "-n", "200", "-N", "3", "--json", "--seed", "6", "--prompt", "line 7")
    assert result.exit_code == 0, result.stderr
    for record in map(json.loads, result.stdout.splitlines()):
        assert "\n" not in record["text"]


# ---------------------------------------------------------------------------------------
# RUN_DIR


def test_run_dir_that_is_a_file_missing_or_empty(run, tmp_path):
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"\x00" * 10)
    assert_error(generate(a_file), str(a_file), "is a file, not a run folder")
    assert_error(perplexity(a_file, "--data", str(run.parent / "corpus.txt")), "is a file, not a run folder")
    assert_error(generate(tmp_path / "nowhere"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(generate(empty), str(empty), "not a charlm run (no config.json)")


def test_run_with_no_checkpoint_yet(run, tmp_path):
    """A training run killed before its first checkpoint: config and tokenizer, no weights."""
    young = RunDirectory(tmp_path / "young")
    young.prepare()
    young.save_tokenizer(RunDirectory(run).load_tokenizer())
    young.write_config(RunDirectory(run).read_config())
    assert_error(generate(young.path), str(young.path), "checkpoint yet")
    assert_error(perplexity(young.path, "--data", str(run.parent / "corpus.txt")), "checkpoint yet")


def test_escape_sequences_in_a_file_name_do_not_reach_stderr(tmp_path):
    name = tmp_path / "\x1b[2J\x1b]0;owned\x07run\rx"
    line = assert_error(generate(name), "does not exist")
    assert_clean_stderr(line)
    assert "\\x1b[2J" in line


# ---------------------------------------------------------------------------------------
# perplexity --data


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_binary_data_is_refused(errors, run, tmp_path):
    path = tmp_path / "program"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00" + os.urandom(5000))
    assert_error(perplexity(run, "--data", str(path), "--encoding-errors", errors), str(path), "binary")


def test_random_bytes_without_nul_strict_and_replace(run, tmp_path):
    rng = random.Random(1)
    path = tmp_path / "noise.dat"
    path.write_bytes(b"line 1\n" + bytes(rng.randrange(128, 256) for _ in range(5000)))
    assert_error(perplexity(run, "--data", str(path)), str(path), "not valid UTF-8", "--encoding-errors replace")
    result = perplexity(run, "--data", str(path), "--encoding-errors", "replace", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["unknown"] > 0


def test_invalid_utf8_strict_and_replace(run, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"line 1: the fox\nline 2: caf\xe9\n")
    line = assert_error(perplexity(run, "--data", str(path)), str(path))
    assert "byte 27" in line and "line 2" in line
    result = perplexity(run, "--data", str(path), "--encoding-errors", "replace", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["chars"] == len("line 1: the fox\nline 2: caf\ufffd\n")


def test_empty_data_and_empty_stdin(run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_error(perplexity(run, "--data", str(empty)), str(empty), "empty")
    assert_error(perplexity(run, "--data", "-", input=b""), "--data -", "empty")
    assert_error(perplexity(run, "--data", "-", "--per-line", input=b""), "no text")


def test_stdin_invalid_utf8_strict_and_replace(run):
    data = b"line 1: the fox \xff\xfe\n"
    assert_error(perplexity(run, "--data", "-", input=data), "stdin", "byte 16", "--encoding-errors replace")
    result = perplexity(run, "--data", "-", "--encoding-errors", "replace", "--json", input=data)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] == len(data.decode("utf-8", "replace"))


@pytest.mark.parametrize(
    "content,needle",
    [
        ("plain text, not JSON\n", "line 1 is not a JSON object with a 'text' field"),
        ('{"text": "ok"}\n[1, 2]\n', "line 2 is not a JSON object"),
        ('{"text": "ok"}\n"a string"\n', "line 2 is not a JSON object"),
        ('{"other": "x"}\n', "line 1 is not a JSON object with a 'text' field"),
        ('{"text": 5}\n', "line 1: field 'text' is not text"),
        ('{"text": "\\ud800"}\n', "line 1: field 'text' is not valid Unicode: character 0 is U+D800, a lone surrogate"),
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "line 1 is not a JSON object"),
    ],
    ids=["not-json", "list", "string", "no-field", "number", "surrogate", "nested-too-deeply"],
)
def test_per_line_field_on_lines_that_are_not_json_objects(content, needle, run, tmp_path):
    path = tmp_path / "lines.jsonl"
    path.write_text(content, encoding="utf-8")
    assert_error(perplexity(run, "--data", str(path), "--per-line", "--field", "text"), str(path), needle)


def test_field_needs_per_line_and_per_line_needs_data(run, tmp_path):
    assert_error(perplexity(run, "--field", "text", "--data", str(run.parent / "corpus.txt")), "--field goes with")
    assert_error(perplexity(run, "--per-line"), "--per-line needs --data")


def test_folder_with_no_text(run, tmp_path):
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    assert_error(perplexity(run, "--data", str(empty)), str(empty), "no text files")
    binaries = tmp_path / "binaries"
    binaries.mkdir()
    (binaries / "a.bin").write_bytes(b"\x00\x01\x02" * 100)
    (binaries / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert_error(perplexity(run, "--data", str(binaries)), str(binaries), "no text files")


def test_per_line_table_escapes_control_characters(run, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("line \x1b[31m1\rx\nline \u202e2\n", encoding="utf-8")
    result = perplexity(run, "--data", str(path), "--per-line")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\r" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b[31m1\\rx" in result.stdout


@pytest.mark.slow
def test_a_10_mb_single_line_is_scored(run, tmp_path):
    words = "the quick brown fox jumps over lazy dog line".split()
    rng = random.Random(7)
    text = " ".join(rng.choice(words) for _ in range(2_400_000))[:10_000_000]
    path = tmp_path / "one-line.txt"
    path.write_text(text, encoding="utf-8")
    assert "\n" not in text
    result = perplexity(run, "--data", str(path), "--lanes", "128", "--json")
    assert result.exit_code == 0, result.stderr
    score = json.loads(result.stdout)
    assert score["tokens"] == score["chars"] == 10_000_000
    assert 0 < score["loss_nats_per_token"] < 10
