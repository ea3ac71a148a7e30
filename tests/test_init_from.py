"""`charlm train --init-from RUN`: a new language-model run that starts from another's weights.

Covers: the new run's weights at step 0 are RUN's best checkpoint bit for bit, with RUN's
tokenizer (tokenizer.json byte for byte) and shape, and dropout and the regularisers given
anew; the note on the new text's characters RUN never saw (how many, what share, which);
config.json's record of the source; options contradicting RUN refused by name, an equal
value accepted; a folder that is no run, a run with no checkpoint, a run that is not a
language model, --resume together and --out RUN refused; a resume of such a run bit-exact
against an uninterrupted one, from its own files with RUN gone; the token cache of a given
tokenizer kept apart from the one fitted on the same text; the real CLI in a child process.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import (
    assert_user_error,
    checkpoint_weights,
    child_env,
    invoke,
    read_config,
    read_events,
    run_cli,
    word_text,
    write_text,
)

from charlm.config import ModelShape
from charlm.errors import OptionError
from charlm.runs.directory import BEST, LAST, RunDirectory
from charlm.tasks.lm_run import LanguageModelRun, plan_run
from charlm.tasks.sizing import SHAPE_DECISIONS
from charlm.text.corpus import prepare_corpus
from charlm.text.tokenizer import CharTokenizer, fingerprint

RUN_SHAPE = ModelShape(cell="lstm", layers=1, hidden=24, embed=8, dropout=0.0)
QUIET = dict(device="cpu", precision="fp32", threads=1, sample_length=0, log_every=1, eval_every=5)
# characters the run below never saw: the new text is mostly the same words, with these among them
NEW_WORDS = ("café", "naïve", "€uro")
NEW_TEXT = word_text(2500, seed=11, extra=NEW_WORDS)


def train(options: dict, shape: ModelShape, given, out: Path, resume: bool = False) -> LanguageModelRun:
    """A run set up and trained through the library, as `charlm train` does it."""
    run = LanguageModelRun.start(options, shape, given, out, resume=resume)
    run.prepare_corpus()
    run.open_run_directory()
    trainer = run.trainer()
    trainer.run()
    trainer.close()
    return run


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, str]:
    """RUN: a char-level language model trained for ten steps on ASCII words; and its text."""
    root = tmp_path_factory.mktemp("source")
    text = word_text(3000, seed=5)
    data = write_text(root / "old.txt", text)
    options = dict(QUIET, data=str(data), batch_size=4, seq_len=12, max_steps=10, warmup_steps=2)
    with pytest.MonkeyPatch.context() as patch:  # module fixtures run outside the per-test data folder
        patch.setenv("CHARLM_CACHE_DIR", str(root / "cache"))
        train(options, RUN_SHAPE, set(options) | set(SHAPE_DECISIONS), root / "run")
    assert RunDirectory(root / "run").checkpoint_dir(BEST) is not None
    return root / "run", text


def adapt_options(run: Path, new: Path, **more) -> dict:
    base = dict(data=str(new), init_from=str(run), batch_size=4, seq_len=12, max_steps=6, warmup_steps=2)
    return {**QUIET, **base, **more}


def start(options: dict, out: Path, shape: ModelShape = ModelShape(), given=()) -> LanguageModelRun:
    """A new --init-from run planned, its corpus prepared and its folder made; not trained."""
    run = LanguageModelRun.start(options, shape, set(options) | set(given), out)
    run.prepare_corpus()
    run.open_run_directory()
    return run


def test_the_new_run_starts_with_runs_weights_tokenizer_and_shape(source, tmp_path):
    run_path, _ = source
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    # dropout and the regularisers may be given anew; the shape given (the defaults) is not RUN's and not given
    shape = ModelShape(dropout=0.3, weight_dropout=0.2, embed_dropout=0.1)
    run = start(
        adapt_options(run_path, new), tmp_path / "adapted", shape, {"dropout", "weight_dropout", "embed_dropout"}
    )
    trainer = run.trainer()

    theirs = checkpoint_weights(run_path, BEST)
    ours = trainer.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)  # step 0: RUN's best weights, bit for bit

    out = tmp_path / "adapted"
    assert (out / "tokenizer.json").read_bytes() == (run_path / "tokenizer.json").read_bytes()
    config, saved = read_config(out), read_config(run_path)
    expected_model = {**saved["model"], "dropout": 0.3, "weight_dropout": 0.2, "embed_dropout": 0.1}
    assert config["model"] == expected_model
    assert config["tokenizer_fingerprint"] == saved["tokenizer_fingerprint"]
    assert config["train"]["init_from"] == str(run_path.resolve())
    assert config["train"]["tokenizer"] == "char"
    step = RunDirectory(run_path).checkpoint_metadata(BEST)["step"]
    assert config["extra"]["init_from"] == {
        "run": str(run_path.resolve()), "checkpoint": BEST, "step": step,
        "tokenizer_fingerprint": saved["tokenizer_fingerprint"],
    }  # fmt: skip
    # the budget rule kept RUN's shape, choosing nothing of it
    assert not set(config["extra"].get("budget", {}).get("decided", [])) & set(SHAPE_DECISIONS)

    result = trainer.run()  # and it trains from there (a new optimizer, from step 0)
    trainer.close()
    assert result.step == 6
    assert [e["step"] for e in read_events(out) if e["event"] == "train"] == list(range(1, 7))


def test_the_unseen_characters_are_noted_once_with_their_share_and_the_most_common(source, tmp_path):
    run_path, _ = source
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    run = start(adapt_options(run_path, new), tmp_path / "adapted")
    known = {chr(c) for c in RunDirectory(run_path).load_tokenizer().code_points.tolist()}
    unseen = Counter(c for c in NEW_TEXT if c not in known)
    assert set(unseen) >= {"é", "ï", "€"}
    notes = [note for note in run.corpus.notes if "never saw" in note]
    assert len(notes) == 1, run.corpus.notes
    note = notes[0]
    total = sum(unseen.values())
    assert note.startswith(f"the new text has {total:,} characters ({total / len(NEW_TEXT):.1%}) that ")
    assert str(run_path.resolve()) in note and note.endswith("they are read as unknown")
    for char, count in unseen.most_common(3):
        assert f"{char!r} ×{count:,}" in note
    # no note of the fitted kind ("never occur in the training split"): the tokenizer was not fitted here
    assert not any("training split" in n for n in run.corpus.notes)
    assert run.corpus.unknown["train"] + run.corpus.unknown["val"] == total


@pytest.mark.parametrize("tokenizer", ["byte", "sentencepiece"])
def test_a_run_from_a_byte_or_sentencepiece_run_encodes_with_its_tokenizer(tmp_path, tokenizer):
    data = write_text(tmp_path / "old.txt", word_text(4000, seed=3))
    options = dict(QUIET, data=str(data), tokenizer=tokenizer, vocab_size=300, batch_size=4, seq_len=12, max_steps=5,
                   warmup_steps=2)  # fmt: skip
    train(options, RUN_SHAPE, set(options) | set(SHAPE_DECISIONS), tmp_path / "old")
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    run = start(adapt_options(tmp_path / "old", new), tmp_path / "adapted")
    theirs_tokenizer = RunDirectory(tmp_path / "old").load_tokenizer()
    assert fingerprint(run.corpus.tokenizer) == fingerprint(theirs_tokenizer)
    assert (
        run.corpus.splits["train"].tolist() == theirs_tokenizer.encode(NEW_TEXT[: run.corpus.chars["train"]]).tolist()
    )
    assert not any("never saw" in note for note in run.corpus.notes)  # bytes spell every character
    which = BEST if RunDirectory(tmp_path / "old").checkpoint_dir(BEST) else LAST
    theirs, ours = checkpoint_weights(tmp_path / "old", which), run.trainer().model.state_dict()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert read_config(tmp_path / "adapted")["train"]["vocab_size"] == 300  # RUN's, though not given here
    if tokenizer == "sentencepiece":  # a vocabulary size other than RUN's is refused; to a byte run it means nothing
        other = adapt_options(tmp_path / "old", new, vocab_size=500)
        with pytest.raises(OptionError, match="vocab_size 500 contradicts --init-from .* with vocab_size 300"):
            plan_run(other, ModelShape(), set(other))


@pytest.mark.parametrize(
    "option, value, flag",
    [("hidden", 64, "--hidden 64"), ("layers", 3, "--layers 3"), ("embed", 4, "--embed 4"),
     ("cell", "gru", "--cell gru"), ("tie_weights", True, "--tie-weights on"),
     ("tokenizer", "byte", "--tokenizer byte")],
)  # fmt: skip
def test_options_that_contradict_the_run_are_refused(source, tmp_path, option, value, flag):
    run_path, _ = source
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    arg = ["--tie-weights"] if option == "tie_weights" else ["--" + option.replace("_", "-"), str(value)]
    result = invoke("train", "--init-from", str(run_path), "--data", str(new), "--out", str(tmp_path / "x"), *arg)
    error = assert_user_error(result, flag, "contradicts --init-from", "keeps its", "leave the option out")
    assert not (tmp_path / "x").exists(), error


def test_an_option_equal_to_the_runs_is_accepted(source, tmp_path):
    run_path, _ = source
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    shape = ModelShape(cell="lstm", layers=1, hidden=24, embed=8, tie_weights=False)
    options = adapt_options(run_path, new, tokenizer="char", vocab_size=123)  # vocab_size: nothing to a char run
    plan = plan_run(options, shape, set(options) | {"cell", "layers", "hidden", "embed", "tie_weights"})
    assert plan.shape.hidden == 24 and plan.train.vocab_size == read_config(run_path)["train"]["vocab_size"]
    # dropout and the regularisers not given are RUN's, not the defaults
    assert (plan.shape.dropout, plan.shape.dropout_kind) == (RUN_SHAPE.dropout, RUN_SHAPE.dropout_kind) != (
        ModelShape().dropout, ModelShape().dropout_kind)  # fmt: skip


def test_what_is_no_language_model_run_with_a_checkpoint_is_refused(source, tmp_path):
    run_path, _ = source
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    (tmp_path / "empty").mkdir()
    no_checkpoint = tmp_path / "fresh"
    no_checkpoint.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(run_path / name, no_checkpoint / name)
    classifier = tmp_path / "classifier"
    shutil.copytree(run_path, classifier)
    config = json.loads((classifier / "config.json").read_text())
    (classifier / "config.json").write_text(json.dumps({**config, "task": "classify"}))
    cases = [
        (tmp_path / "missing", ("no such folder",)),
        (tmp_path / "empty", ("is not a charlm run", "config.json")),
        (no_checkpoint, ("has no checkpoint yet",)),
        (classifier, ("'classify' run, not a language model",)),
    ]
    for folder, needles in cases:
        result = invoke("train", "--init-from", str(folder), "--data", str(new), "--out", str(tmp_path / "x"))
        assert_user_error(result, "--init-from", *needles)
    assert not (tmp_path / "x").exists()


def test_init_from_with_resume_or_into_the_run_itself_is_refused(source, tmp_path):
    run_path, _ = source
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    resume = invoke("train", "--init-from", str(run_path), "--out", str(run_path), "--resume")
    assert_user_error(resume, "--init-from and --resume contradict each other")
    before = sorted(path.name for path in run_path.iterdir())
    into = invoke("train", "--init-from", str(run_path), "--data", str(new), "--out", str(run_path), "--overwrite")
    assert_user_error(into, "--out is the --init-from run itself")
    assert sorted(path.name for path in run_path.iterdir()) == before


def test_resuming_a_run_started_from_another_is_exact_and_needs_only_its_own_files(source, tmp_path):
    run_path, _ = source
    copy = tmp_path / "source"  # a copy of RUN, deleted before the resume
    shutil.copytree(run_path, copy)
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    N = 6
    # a constant peak rate after a warmup past N, so the schedule does not depend on max_steps
    more = dict(min_lr_ratio=1.0, warmup_steps=N + 3, eval_every=4, checkpoint_every=1000)
    reference = adapt_options(copy, new, **{**more, "max_steps": 2 * N})
    train(reference, ModelShape(dropout=0.2), set(reference) | {"dropout"}, tmp_path / "a")  # dropout draws RNG
    first = adapt_options(copy, new, **{**more, "max_steps": N})
    train(first, ModelShape(dropout=0.2), set(first) | {"dropout"}, tmp_path / "b")
    shutil.rmtree(copy)
    resumed = train({"max_steps": 2 * N}, ModelShape(), {"max_steps"}, tmp_path / "b", resume=True)

    assert [e["step"] for e in read_events(tmp_path / "b") if e["event"] == "resume"] == [N]
    assert fingerprint(resumed.corpus.tokenizer) == read_config(run_path)["tokenizer_fingerprint"]
    a, b = checkpoint_weights(tmp_path / "a"), checkpoint_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)

    def losses(run: Path, kind: str) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in read_events(run) if e["event"] == kind}

    assert losses(tmp_path / "a", "train") == losses(tmp_path / "b", "train")
    evals = losses(tmp_path / "b", "eval")
    assert evals.pop(N) is not None  # the closing validation of the first half
    assert losses(tmp_path / "a", "eval") == evals
    assert read_config(tmp_path / "b")["extra"]["init_from"] == read_config(tmp_path / "a")["extra"]["init_from"]


def test_a_given_tokenizers_cache_is_kept_apart_from_the_fitted_one(source, tmp_path):
    run_path, _ = source
    given = RunDirectory(run_path).load_tokenizer()
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    cache = tmp_path / "cache"
    fitted = prepare_corpus(str(new), tokenizer="char", cache_root=cache)
    encoded = prepare_corpus(str(new), tokenizer="char", cache_root=cache, use_tokenizer=given)
    assert encoded.cache_dir != fitted.cache_dir and not encoded.from_cache
    assert fingerprint(encoded.tokenizer) == fingerprint(given) != fingerprint(fitted.tokenizer)
    assert encoded.splits["train"].tolist() == given.encode(NEW_TEXT[: fitted.chars["train"]]).tolist()
    assert fitted.unknown["train"] == 0 and encoded.unknown["train"] > 0
    # found again; a fitted run of the same text still gets its own; another given tokenizer gets another
    again = prepare_corpus(str(new), cache_root=cache, use_tokenizer=given)
    assert again.from_cache and again.cache_dir == encoded.cache_dir
    assert prepare_corpus(str(new), tokenizer="char", cache_root=cache).cache_dir == fitted.cache_dir
    other = CharTokenizer.fit([NEW_TEXT])  # the very tokenizer fitting gives, but given
    assert prepare_corpus(str(new), cache_root=cache, use_tokenizer=other).cache_dir not in (
        fitted.cache_dir, encoded.cache_dir)  # fmt: skip
    # a cache whose tokenizer.json was swapped for another is rebuilt, not trusted
    other.save(encoded.cache_dir)
    rebuilt = prepare_corpus(str(new), cache_root=cache, use_tokenizer=given)
    assert not rebuilt.from_cache and fingerprint(rebuilt.tokenizer) == fingerprint(given)


@pytest.mark.slow  # a real child process
def test_the_command_line_adapts_a_run_to_new_text(source, tmp_path):
    run_path, _ = source
    new = write_text(tmp_path / "new.txt", NEW_TEXT)
    out = tmp_path / "adapted"
    done = run_cli(
        "train", "--init-from", str(run_path), "--data", str(new), "--out", str(out), "--max-steps", "4",
        "--batch-size", "4", "--seq-len", "12", "--threads", "1", "--sample-length", "20", "--eval-every", "2",
        env=child_env(tmp_path / "data"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "starting from" in done.stderr and f"{run_path.resolve()}'s best checkpoint" in done.stderr
    assert "never saw, e.g. " in done.stderr and "they are read as unknown" in done.stderr
    assert (out / "tokenizer.json").read_bytes() == (run_path / "tokenizer.json").read_bytes()
    assert read_config(out)["extra"]["init_from"]["run"] == str(run_path.resolve())
    help_text = invoke("train", "--help").stdout
    assert "--init-from RUN" in help_text
