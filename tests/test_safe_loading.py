"""Loading a run directory from a stranger: no code runs, and every damaged file is named.

Covered here, on real run directories trained for a few steps by the real Trainer:
  * a real malicious pickle (its __reduce__ opens a marker file) as last/trainer_state.pt, as
    a raw pickle and inside a torch.save zip: the test first shows, on a throwaway copy in a
    separate process, that plain pickle / torch.load(weights_only=False) runs it; then
    `charlm train --out RUN --resume` in a real process exits 1 with one line naming the
    file, the marker never appears and the run's files are untouched;
  * the same payload, or random bytes, where model.safetensors should be: generate,
    perplexity and resume refuse it naming the file;
  * each file of a run damaged in turn (missing, truncated, empty, binary, the wrong JSON
    shape, a newer format, wrong field types or values, a FIFO or folder in its place, too
    large, non-finite weights, weights or tokenizer from another run), through generate,
    perplexity and resume: exit 1, one "charlm: error:" line that names the file, no
    traceback;
  * path escapes: a tokenizer.json whose "model_file" is "../x", absolute, "/dev/zero" or
    in a subfolder is refused, even when it points at a valid SentencePiece model;
  * a crafted config.json describing an enormous model is refused before anything is
    allocated for it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import (
    REPO,
    assert_user_error,
    child_env,
    end_event,
    invoke,
    numbered_lines,
    run_cli,
    snapshot,
    train_tiny_run,
)
from safetensors.torch import load_file, save_file

from charlm.errors import CharlmError
from charlm.inference.generate import Generator
from charlm.runs.directory import BEST, CONFIG_FILE, LAST, STATE_FILE, WEIGHTS_FILE, RunDirectory
from charlm.text.tokenizer import SPM_MODEL_FILE, TOKENIZER_FILE, load_tokenizer

STEPS = 12
TEXT = numbered_lines(150)
OTHER_TEXT = "".join(f"{i} banana bandana\n" for i in range(400))  # a smaller vocabulary
MARKER = "PAYLOAD_RAN"  # the file the payload creates, relative to the loading process's folder


class Payload:
    """Unpickling this calls open(MARKER, "w"): code from the file, run by the loader."""

    def __reduce__(self):
        return (open, (MARKER, "w"))


def build_run(root: Path, text: str, tokenizer: str = "char", vocab_size: int = 2000) -> Path:
    """A tiny LSTM (hidden 16) trained for STEPS steps into root/run: config, tokenizer, best and last."""
    return train_tiny_run(root, text, tokenizer=tokenizer, vocab_size=vocab_size, model=dict(hidden=16, embed=8),
                          batch_size=4, seq_len=16, warmup_steps=2, max_steps=STEPS, eval_every=STEPS,
                          eval_batch_size=2, checkpoint_every=STEPS, log_every=STEPS)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three pristine runs, shared read-only: char, another char (other vocabulary), sentencepiece."""
    root = tmp_path_factory.mktemp("safe-loading")
    return {
        "char": build_run(root / "char", TEXT),
        "other": build_run(root / "other", OTHER_TEXT),
        "spm": build_run(root / "spm", TEXT, "sentencepiece", vocab_size=300),
    }


@pytest.fixture
def run(runs, tmp_path) -> Path:
    """A private copy of the char run, to damage."""
    return Path(shutil.copytree(runs["char"], tmp_path / "run"))


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "score.txt"
    path.write_text(TEXT[:2000], encoding="utf-8")
    return path


COMMANDS = ("generate", "perplexity", "resume")


def run_command(command: str, run: Path, text_file: Path):
    """One of the three ways a run directory gets loaded, in this process (CliRunner)."""
    if command == "generate":
        return invoke("generate", str(run), "-n", "5", "--seed", "1", "--threads", "1")
    if command == "perplexity":
        return invoke("perplexity", str(run), "--data", str(text_file), "--threads", "1")
    return invoke("train", "--out", str(run), "--resume", "--max-steps", str(STEPS + 4),
                  "--sample-length", "0", "--threads", "1")  # fmt: skip


def assert_refused(command: str, run: Path, text_file: Path, names: Path, *needles: str) -> str:
    """The command fails with exit 1 and one error line (the last of stderr) naming the file."""
    result = run_command(command, run, text_file)
    # resume reports its corpus before it reaches the checkpoint; the others fail first thing
    line = assert_user_error(result, *needles, status=1, alone=command != "resume")
    assert str(names) in line, f"the error does not name {names}: {line}"
    return line


# ---------------------------------------------------------------------------------------
# the control: an undamaged copy loads in every way


@pytest.mark.parametrize("command", COMMANDS)
def test_an_undamaged_run_loads(command, run, text_file):
    result = run_command(command, run, text_file)
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    if command == "generate":  # five characters of the corpus's alphabet, no prompt, one newline
        assert len(result.stdout) == 6 and result.stdout.endswith("\n"), repr(result.stdout)
        assert set(result.stdout[:-1]) <= set(TEXT)
        assert f"best checkpoint of {run}" in result.stderr
    elif command == "perplexity":  # every character of the text scored
        (row,) = [line for line in result.stdout.splitlines() if "tokens scored" in line]
        assert row.split()[-1] == f"{len(text_file.read_text(encoding='utf-8')):,}"
    else:
        end = end_event(run)
        assert (end["step"], end["reason"]) == (STEPS + 4, "max_steps")


# ---------------------------------------------------------------------------------------
# a real malicious pickle


def evil_file(path: Path, form: str) -> Path:
    if form == "pickle":
        import pickle

        path.write_bytes(pickle.dumps({"format": 2, "step": 1, "payload": Payload()}))
    else:
        torch.save({"format": 2, "step": 1, "payload": Payload()}, path)
    return path


def prove_it_runs_code(evil: Path, form: str, folder: Path) -> None:
    """Load a throwaway copy the unsafe way, in another process with its own folder: the
    payload runs there. This is what charlm must never do."""
    folder.mkdir()
    copy = Path(shutil.copy(evil, folder / "copy.pt"))
    if form == "pickle":
        code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    else:
        code = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run([sys.executable, "-c", code, str(copy)], cwd=folder, check=True, capture_output=True, timeout=120)
    assert (folder / MARKER).exists(), "the payload should run under plain pickle"


@pytest.mark.slow
@pytest.mark.parametrize("form", ["pickle", "torch-zip"])
def test_malicious_trainer_state_is_refused_and_never_runs(form, runs, tmp_path):
    run = Path(shutil.copytree(runs["char"], tmp_path / "run"))
    evil = evil_file(tmp_path / "evil.pt", form)
    prove_it_runs_code(evil, form, tmp_path / "proof")

    shutil.copy(evil, run / LAST / STATE_FILE)
    before = snapshot(run)
    work = tmp_path / "work"  # the charlm process runs here; the payload would write here
    work.mkdir()
    done = run_cli("train", "--out", str(run), "--resume", "--max-steps", str(STEPS + 4), "--sample-length", "0",
                   "--threads", "1", env=child_env(), cwd=work)  # fmt: skip
    assert done.returncode == 1
    line = assert_user_error(done, alone=False)
    assert str(run / LAST / STATE_FILE) in line
    assert "never runs code" in line
    assert "UserWarning" not in done.stderr  # torch's warnings about the pickle stay quiet
    assert not (work / MARKER).exists(), "the payload ran"
    assert not (run / MARKER).exists() and not (REPO / MARKER).exists()
    # nothing lost: the checkpoints and tokenizer are as they were (resume records its new
    # limits in config.json and a session event in metrics.jsonl before it loads the state)
    after = snapshot(run)
    kept = [name for name in before if name not in ("config.json", "metrics.jsonl")]
    assert {name: after.get(name) for name in kept} == {name: before[name] for name in kept}


def test_library_refuses_the_malicious_trainer_state(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil_file(run / LAST / STATE_FILE, "torch-zip")
    with pytest.raises(CharlmError, match="cannot be loaded safely") as caught:
        RunDirectory(run).load_trainer_state()
    assert str(run / LAST / STATE_FILE) in str(caught.value)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("content", ["pickle", "random"])
@pytest.mark.parametrize("command", COMMANDS)
def test_pickle_or_random_bytes_as_weights_is_refused(content, command, run, text_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for which in (BEST, LAST):
        target = run / which / WEIGHTS_FILE
        if content == "pickle":
            evil_file(target, "torch-zip")
        else:
            target.write_bytes(os.urandom(4096))
    which = LAST if command == "resume" else BEST
    assert_refused(command, run, text_file, run / which / WEIGHTS_FILE, "safetensors")
    assert not (tmp_path / MARKER).exists()


# ---------------------------------------------------------------------------------------
# damaged files, one at a time


def rewrite_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def set_field(section: str, name: str, value) -> Callable[[Path], None]:
    return lambda path: rewrite_json(path, lambda d: d[section].__setitem__(name, value))


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def link_to_dev_zero(path: Path) -> None:
    """Endless zeros: read whole, the machine runs out of memory."""
    path.unlink()
    path.symlink_to("/dev/zero")


# (case, damage to config.json, words the error must hold)
CONFIG_DAMAGE = [
    ("truncated", truncate, "not valid JSON"),
    ("empty", lambda p: p.write_bytes(b""), "empty"),
    ("binary", lambda p: p.write_bytes(os.urandom(300) + b"\xff"), "cannot be read"),
    ("not-an-object", lambda p: p.write_text("[1, 2]"), "not a JSON object"),
    ("nested-too-deeply", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    ("newer-format", lambda p: rewrite_json(p, lambda d: d.__setitem__("format_version", 2)), "upgrade charlm"),
    ("format-as-text", lambda p: rewrite_json(p, lambda d: d.__setitem__("format_version", "1")), "format_version"),
    ("hidden-as-text", set_field("model", "hidden", "16"), "--hidden must be a whole number"),
    ("hidden-negative", set_field("model", "hidden", -3), "--hidden must be at least 1"),
    ("dropout-nan", set_field("model", "dropout", math.nan), "--dropout"),
    ("unknown-cell", set_field("model", "cell", "transformer"), "--cell"),
    ("unknown-field", set_field("model", "attention_heads", 8), "attention_heads"),
    ("model-not-an-object", lambda p: rewrite_json(p, lambda d: d.__setitem__("model", [1])), "'model'"),
    ("train-missing", lambda p: rewrite_json(p, lambda d: d.pop("train")), "'train'"),
    ("lanes-as-text", set_field("train", "eval_batch_size", "16"), "--eval-batch-size"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case,damage,needle", CONFIG_DAMAGE, ids=[c[0] for c in CONFIG_DAMAGE])
def test_damaged_config_is_named(case, damage, needle, command, run, text_file):
    damage(run / CONFIG_FILE)
    assert_refused(command, run, text_file, run / CONFIG_FILE, needle)


@pytest.mark.parametrize("command", ["generate", "perplexity"])
@pytest.mark.parametrize(
    "case,damage,needle",
    [
        ("fifo", replace_with_fifo, "not a regular file"),
        ("dev-zero", link_to_dev_zero, "not a regular file"),
        ("folder", lambda p: (p.unlink(), p.mkdir()), "is a folder"),
        ("oversized", lambda p: p.write_bytes(b" " * (2 << 20) + p.read_bytes()), "MiB"),
        ("enormous-model", set_field("model", "hidden", 10**12), "cannot be built"),
    ],
)
def test_config_that_would_hang_or_exhaust_memory_is_refused(case, damage, needle, command, run, text_file):
    # (resume checks the folder before it reads config.json; those messages are the trainer's)
    damage(run / CONFIG_FILE)
    assert_refused(command, run, text_file, run / CONFIG_FILE, needle)


@pytest.mark.parametrize("command", ["generate", "perplexity"])
def test_missing_config_names_the_folder(command, run, text_file):
    (run / CONFIG_FILE).unlink()
    line = assert_refused(command, run, text_file, run, CONFIG_FILE)
    assert "not a charlm run" in line


TOKENIZER_DAMAGE = [
    ("missing", lambda p: p.unlink(), "is missing"),
    ("truncated", truncate, "not valid JSON"),
    ("empty", lambda p: p.write_bytes(b""), "empty"),
    ("binary", lambda p: p.write_bytes(b"\x00\xff" + os.urandom(200)), "cannot be read"),
    ("not-an-object", lambda p: p.write_text('"char"'), "not a charlm tokenizer"),
    ("newer-version", lambda p: rewrite_json(p, lambda d: d.__setitem__("version", 2)), "upgrade charlm"),
    ("no-version", lambda p: rewrite_json(p, lambda d: d.pop("version")), "no valid version"),
    ("unknown-kind", lambda p: rewrite_json(p, lambda d: d.__setitem__("kind", "words")), "unknown tokenizer kind"),
    ("code-points-text", lambda p: rewrite_json(p, lambda d: d.__setitem__("code_points", "abc")), "invalid vocabulary"),
    ("code-point-float", lambda p: rewrite_json(p, lambda d: d["code_points"].__setitem__(0, 10.5)),
     "invalid vocabulary"),
    ("code-points-unsorted", lambda p: rewrite_json(p, lambda d: d["code_points"].reverse()), "invalid vocabulary"),
    ("code-point-surrogate", lambda p: rewrite_json(p, lambda d: d["code_points"].__setitem__(-1, 0xD800)),
     "invalid vocabulary"),
    ("byte-in-a-char-run", lambda p: p.write_text('{"kind": "byte", "version": 1}'), "config.json says"),
    ("fifo", replace_with_fifo, "not a regular file"),
    ("dev-zero", link_to_dev_zero, "not a regular file"),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case,damage,needle", TOKENIZER_DAMAGE, ids=[c[0] for c in TOKENIZER_DAMAGE])
def test_damaged_tokenizer_is_named(case, damage, needle, command, run, text_file):
    damage(run / TOKENIZER_FILE)
    assert_refused(command, run, text_file, run / TOKENIZER_FILE, needle)


@pytest.mark.parametrize("command", COMMANDS)
def test_tokenizer_copied_from_another_run_is_refused(command, run, runs, text_file):
    other = load_tokenizer(runs["other"])
    mine = load_tokenizer(run)
    assert other.vocab_size != mine.vocab_size  # the point of the test
    shutil.copy(runs["other"] / TOKENIZER_FILE, run / TOKENIZER_FILE)
    line = assert_refused(command, run, text_file, run / TOKENIZER_FILE, "vocabulary")
    assert f"{other.vocab_size}" in line and f"{mine.vocab_size}" in line


def test_generator_from_a_model_and_a_foreign_tokenizer_is_refused(run, runs):
    model, _ = RunDirectory(run).load_model()
    with pytest.raises(CharlmError, match="give the model its own tokenizer"):
        Generator(model, load_tokenizer(runs["other"]))


def nan_weights(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["head.bias"][0] = math.nan
    save_file(tensors, str(path))


def int_weights(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["head.bias"] = tensors["head.bias"].to(torch.int64)
    save_file(tensors, str(path))


def extra_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    tensors["backdoor.weight"] = torch.zeros(2)
    save_file(tensors, str(path))


def missing_tensor(path: Path) -> None:
    tensors = load_file(str(path))
    del tensors["rnn.weight_hh_l0"]
    save_file(tensors, str(path))


WEIGHTS_DAMAGE = [
    ("truncated", truncate, "safetensors"),
    ("header-only", lambda p: p.write_bytes(p.read_bytes()[:100]), "safetensors"),
    ("empty", lambda p: p.write_bytes(b""), "safetensors"),
    ("folder", lambda p: (p.unlink(), p.mkdir()), "is a folder"),
    ("fifo", replace_with_fifo, "not a regular file"),
    ("dev-zero", link_to_dev_zero, "not a regular file"),
    ("nan", nan_weights, "NaN"),
    ("integer-dtype", int_weights, "not floating point"),
    ("extra-tensor", extra_tensor, "backdoor.weight"),
    ("missing-tensor", missing_tensor, "rnn.weight_hh_l0"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case,damage,needle", WEIGHTS_DAMAGE, ids=[c[0] for c in WEIGHTS_DAMAGE])
def test_damaged_weights_are_named(case, damage, needle, command, run, text_file):
    for which in (BEST, LAST):
        damage(run / which / WEIGHTS_FILE)
    which = LAST if command == "resume" else BEST
    assert_refused(command, run, text_file, run / which / WEIGHTS_FILE, needle)


@pytest.mark.parametrize("command", COMMANDS)
def test_weights_from_another_run_are_refused(command, run, runs, text_file):
    for which in (BEST, LAST):
        shutil.copy(runs["other"] / which / WEIGHTS_FILE, run / which / WEIGHTS_FILE)
    which = LAST if command == "resume" else BEST
    line = assert_refused(command, run, text_file, run / which / WEIGHTS_FILE, "embedding.weight", "does not match")
    assert "x8" in line  # the shapes are spelled out


@pytest.mark.parametrize("command", ["generate", "perplexity"])
def test_config_with_another_shape_is_refused_before_building_it(command, run, text_file):
    # hidden 1e6 would be 16 GB of LSTM weights: the header check must come first
    rewrite_json(run / CONFIG_FILE, lambda d: d["model"].__setitem__("hidden", 1_000_000))
    assert_refused(command, run, text_file, run / BEST / WEIGHTS_FILE, "x1000000", "does not match")


@pytest.mark.parametrize("command", ["generate", "perplexity"])
def test_a_bad_best_is_not_silently_skipped(command, run, text_file):
    """auto takes best; a damaged best is an error naming it, not a quiet switch to last."""
    truncate(run / BEST / WEIGHTS_FILE)
    assert_refused(command, run, text_file, run / BEST / WEIGHTS_FILE)
    result = invoke("generate", str(run), "-n", "3", "--checkpoint", "last", "--threads", "1")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_no_checkpoint_yet(command, run, text_file):
    for which in (BEST, LAST):
        shutil.rmtree(run / which)
    line = assert_refused(command, run, text_file, run)
    assert ("checkpoint yet" in line) or ("no trainer state" in line) or ("before its first checkpoint" in line)


STATE_DAMAGE = [
    ("missing", lambda p: p.unlink(), "no trainer state"),
    ("truncated", truncate, "damaged"),
    ("empty", lambda p: p.write_bytes(b""), "damaged"),
    ("random", lambda p: p.write_bytes(os.urandom(2048)), "cannot be loaded safely"),
    ("a-list", lambda p: torch.save([1, 2, 3], p), "not a charlm trainer state"),
    ("fifo", replace_with_fifo, "not a regular file"),
    ("dev-zero", link_to_dev_zero, "not a regular file"),
]


@pytest.mark.parametrize("case,damage,needle", STATE_DAMAGE, ids=[c[0] for c in STATE_DAMAGE])
def test_damaged_trainer_state_is_named_and_generation_still_works(case, damage, needle, run, text_file):
    damage(run / LAST / STATE_FILE)
    line = assert_refused("resume", run, text_file, run / LAST / STATE_FILE, needle)
    assert "--overwrite" in line  # what to do
    for command in ("generate", "perplexity"):  # the weights are still good
        result = run_command(command, run, text_file)
        assert result.exit_code == 0, result.stderr


# ---------------------------------------------------------------------------------------
# sentencepiece: tokenizer.model, and "model_file" path escapes


@pytest.fixture
def spm_run(runs, tmp_path) -> Path:
    return Path(shutil.copytree(runs["spm"], tmp_path / "spm-run"))


def test_spm_run_loads(spm_run, text_file):
    result = invoke("generate", str(spm_run), "-n", "5", "--seed", "1", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip(), "no text generated"
    scored = invoke("perplexity", str(spm_run), "--data", str(text_file), "--threads", "1", "--json")
    assert scored.exit_code == 0, scored.stderr
    record = json.loads(scored.stdout)
    assert record["chars"] == len(text_file.read_text(encoding="utf-8")) and 0 < record["tokens"] < record["chars"]


@pytest.mark.parametrize(
    "case,damage,needle",
    [
        ("missing", lambda p: p.unlink(), "is missing"),
        ("truncated", truncate, "not a valid SentencePiece model"),
        ("random", lambda p: p.write_bytes(os.urandom(3000)), "not a valid SentencePiece model"),
        ("empty", lambda p: p.write_bytes(b""), "not a valid SentencePiece model"),
        ("fifo", replace_with_fifo, "not a regular file"),
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_spm_model_is_named(case, damage, needle, command, spm_run, text_file):
    damage(spm_run / SPM_MODEL_FILE)
    assert_refused(command, spm_run, text_file, spm_run / SPM_MODEL_FILE, needle)


@pytest.mark.parametrize(
    "model_file",
    ["../outside.model", "OUTSIDE_ABSOLUTE", "/dev/zero", "sub/tokenizer.model", "..", "", "a\x00b", 7, None],
)
def test_model_file_must_be_a_plain_name_in_the_run_folder(model_file, spm_run, tmp_path):
    # a valid model outside the run folder: were the name followed, loading would succeed
    outside = tmp_path / "outside.model"
    shutil.copy(spm_run / SPM_MODEL_FILE, outside)
    (spm_run / "sub").mkdir()
    shutil.copy(spm_run / SPM_MODEL_FILE, spm_run / "sub" / SPM_MODEL_FILE)
    if model_file == "OUTSIDE_ABSOLUTE":
        model_file = str(outside)
    rewrite_json(spm_run / TOKENIZER_FILE, lambda d: d.__setitem__("model_file", model_file))
    with pytest.raises(CharlmError, match="model_file must be a plain file name") as caught:
        load_tokenizer(spm_run)
    assert str(spm_run / TOKENIZER_FILE) in str(caught.value)
    result = invoke("generate", str(spm_run), "-n", "3", "--threads", "1")
    line = assert_user_error(result)
    assert "model_file" in line and str(spm_run / TOKENIZER_FILE) in line


def test_another_plain_model_file_name_is_followed(spm_run):
    """The check is about where the file is, not its name: a plain name still works."""
    (spm_run / SPM_MODEL_FILE).rename(spm_run / "renamed.model")
    rewrite_json(spm_run / TOKENIZER_FILE, lambda d: d.__setitem__("model_file", "renamed.model"))
    assert load_tokenizer(spm_run).kind == "sentencepiece"


@pytest.mark.parametrize("command", COMMANDS)
def test_spm_tokenizer_in_a_char_run_is_refused(command, run, runs, text_file):
    for name in (TOKENIZER_FILE, SPM_MODEL_FILE):
        shutil.copy(runs["spm"] / name, run / name)
    assert_refused(command, run, text_file, run / TOKENIZER_FILE, "sentencepiece", "char")


def test_checkpoint_metadata_survives_hostile_values(run):
    """Metadata values are JSON strings from the file: parsed safely, never evaluated."""
    path = run / LAST / WEIGHTS_FILE
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"step": "[" * 100_000, "note": "__import__('os')"})
    meta = RunDirectory(run).checkpoint_metadata(LAST)
    assert meta["note"] == "__import__('os')"
    assert meta["step"] == "[" * 100_000
