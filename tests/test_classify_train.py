"""`charlm classify train` end to end: real labelled files in tmp_path, real training, the CLI
in this process (invoke) and as `python -m charlm` child processes.

* A learnable task (label "a" for texts of a/x, "b" for b/y) reaches val accuracy > 0.9 from
  the CLI; the run folder holds config.json (task classify, the labels), tokenizer.json, best/
  and last/ weights, and metrics.jsonl whose eval events carry accuracy and macro-F1.
* Every input format trains: CSV, TSV, JSON lines, fastText, class folders, files per class.
* Resume: a 10-step run resumed to 20, and a run interrupted at step 10 resumed with plain
  --resume, end bit-identical to an uninterrupted 20-step run; changed data, and a shape
  option, are refused.
* Selection and early stopping: --metric macro_f1 makes "best" follow macro-F1; two
  hand-built classifiers on which accuracy and macro-F1 disagree show the selection and the
  patience follow the chosen one; --patience stops the run ("early_stop"), and a resume of
  it is refused.
* --class-weights auto weighs each class by the inverse of its frequency, in the loss too.
* --from-lm: the classifier starts from a language model's embedding and recurrent weights
  (one direction and two); frozen layers stay so while the head trains; contradicting options
  and a source that is no language-model run are refused.
* User errors: one line, non-zero exit, no traceback, no run folder left behind.
* --max-length with --keep head/tail, and texts longer than the classifier's window.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_user_error,
    checkpoint_weights,
    child_env,
    end_event,
    invoke,
    of_kind,
    read_config,
    read_events,
    run_cli,
)

from charlm.classifier_config import ClassifierConfig
from charlm.inference.classifying import encode_texts, pad
from charlm.models.classifier import SequenceClassifier
from charlm.runs.directory import BEST, LAST, RunDirectory
from charlm.tasks.classify_run import ClassifierRun
from charlm.text.tokenizer import build_tokenizer

ALPHABETS = {"a": "ax", "b": "by", "c": "cz"}
# a small classifier whose run takes a second: the shape and batch every run here shares
QUICK = ["--hidden", "12", "--embed", "8", "--threads", "1", "--batch-size", "8", "--device", "cpu",
         "--precision", "fp32", "--log-every", "5"]  # fmt: skip


def examples(count: int, seed: int = 0, labels: str = "ab", lengths=(3, 40), weights=None) -> list[tuple[str, str]]:
    """(text, label) pairs: a text of label L is made of ALPHABETS[L]'s characters."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.choices(labels, weights=weights)[0]
        chars = ALPHABETS[label]
        out.append(("".join(rng.choice(chars) for _ in range(rng.randint(*lengths))), label))
    return out


def write_tsv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    lines = ["\t".join(header)] + [f"{text}\t{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_format(folder: Path, kind: str, rows: list[tuple[str, str]]) -> Path:
    """The rows written in one of the input formats; returns what --data takes."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        path = folder / "data.csv"
        path.write_text("label,text\n" + "".join(f"{label},{text}\n" for text, label in rows), encoding="utf-8")
    elif kind == "tsv":
        path = write_tsv(folder / "data.tsv", rows)
    elif kind == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8")
    elif kind == "fasttext":
        path = folder / "data.txt"
        path.write_text("".join(f"__label__{label} {text}\n" for text, label in rows), encoding="utf-8")
    elif kind == "class-folders":
        path = folder / "folders"
        for number, (text, label) in enumerate(rows):
            (path / label).mkdir(parents=True, exist_ok=True)
            (path / label / f"{number}.txt").write_text(text + "\n", encoding="utf-8")
    elif kind == "class-files":
        path = folder / "files"
        path.mkdir()
        for label in sorted({label for _, label in rows}):
            lines = [text for text, lab in rows if lab == label]
            (path / f"{label}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        raise ValueError(kind)
    return path


def train_cli(*args: str) -> None:
    """charlm classify train ARGS in this process; it must succeed."""
    result = invoke("classify", "train", *args)
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)


def weights_of(run: Path, which: str = LAST) -> dict[str, torch.Tensor]:
    return checkpoint_weights(run, which)


def load(run: Path, which: str = LAST) -> SequenceClassifier:
    model, _ = RunDirectory(run).load_model(which)
    assert isinstance(model, SequenceClassifier)
    return model.eval()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test works in its own folder: a run without --out lands there, never in the checkout."""
    monkeypatch.chdir(tmp_path)


# ----- a learnable task, from the real CLI -----------------------------------------------------


@pytest.mark.parametrize("how", ["in-process", pytest.param("child", marks=pytest.mark.slow)])
def test_a_learnable_task_trains_from_the_cli(tmp_path, how):
    data = write_tsv(tmp_path / "texts.tsv", examples(200))
    run = tmp_path / "run"
    args = ["classify", "train", "--data", str(data), "--out", str(run), *QUICK, "--max-steps", "60",
            "--eval-every", "20"]  # fmt: skip
    if how == "child":
        done = run_cli(*args, cwd=tmp_path, env=child_env())
        assert done.returncode == 0, done.stderr
        said = done.stderr + done.stdout
    else:
        result = invoke(*args)
        assert result.exit_code == 0, result.stderr
        said = result.stderr + result.stdout
    assert "best validation accuracy" in said
    config = read_config(run)
    assert config["task"] == "classify" and config["model"]["labels"] == ["a", "b"]
    assert config["model"]["hidden"] == 12 and config["classify"]["metric"] == "accuracy"
    assert (run / "tokenizer.json").is_file()
    assert (run / BEST / "model.safetensors").is_file() and (run / LAST / "model.safetensors").is_file()
    events = read_events(run)
    evals = of_kind(events, "eval")
    assert [e["step"] for e in evals] == [20, 40, 60]
    for e in evals:
        assert 0.0 <= e["accuracy"] <= 1.0 and 0.0 <= e["macro_f1"] <= 1.0 and e["examples"] == 20
        assert e["selection_loss"] == pytest.approx(1.0 - e["accuracy"])
    assert max(e["accuracy"] for e in evals) > 0.9
    assert end_event(run)["reason"] == "max_steps"
    # best/ holds the weights of the last validation that improved
    best_step = RunDirectory(run).checkpoint_metadata(BEST)["step"]
    assert best_step == [e["step"] for e in evals if e["best"]][-1]


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "fasttext", "class-folders", "class-files"])
def test_every_input_format_trains(tmp_path, kind):
    data = write_format(tmp_path / "data", kind, examples(40, seed=3))
    run = tmp_path / "run"
    train_cli("--data", str(data), "--out", str(run), *QUICK, "--max-steps", "2")
    config = read_config(run)
    assert config["model"]["labels"] == ["a", "b"]
    assert sum(config["extra"]["data"]["examples"].values()) == len(set(examples(40, seed=3)))
    assert end_event(run)["step"] == 2


# ----- exact resume --------------------------------------------------------------------------------


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = write_tsv(tmp_path / "texts.tsv", examples(120, seed=5))
    # a flat rate after the warm-up: the schedule must not depend on --max-steps, which differs at first
    common = ["--data", str(data), *QUICK, "--eval-every", "4", "--checkpoint-every", "3", "--log-every", "1",
              "--dropout", "0.3", "--min-lr-ratio", "1", "--warmup-steps", "5"]  # fmt: skip
    train_cli(*common, "--out", str(tmp_path / "whole"), "--max-steps", "20")
    train_cli(*common, "--out", str(tmp_path / "parts"), "--max-steps", "10")
    assert end_event(tmp_path / "parts")["step"] == 10
    train_cli("--out", str(tmp_path / "parts"), "--resume", "--max-steps", "20", "--threads", "1")
    whole, parts = weights_of(tmp_path / "whole"), weights_of(tmp_path / "parts")
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    losses = lambda run: [(e["step"], e["loss"]) for e in of_kind(read_events(run), "train")]  # noqa: E731
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")
    evals = lambda run: {e["step"]: e["accuracy"] for e in of_kind(read_events(run), "eval")}  # noqa: E731
    whole_evals, parts_evals = evals(tmp_path / "whole"), evals(tmp_path / "parts")
    assert list(whole_evals) == [4, 8, 12, 16, 20] and list(parts_evals) == [4, 8, 10, 12, 16, 20]  # 10: its end
    assert all(parts_evals[step] == accuracy for step, accuracy in whole_evals.items())

    # the data changed (one text): refused, the run untouched
    before = (tmp_path / "parts" / "metrics.jsonl").read_bytes()
    rows = examples(120, seed=5)
    rows[7] = ("xxxxaxax" + rows[7][0], "a") if rows[7][1] == "a" else ("yyyby" + rows[7][0], "b")
    write_tsv(data, rows)
    result = invoke("classify", "train", "--out", str(tmp_path / "parts"), "--resume", "--max-steps", "30")
    assert_user_error(result, "the training data changed", alone=False)
    assert (tmp_path / "parts" / "metrics.jsonl").read_bytes() == before
    # a shape or classifier option cannot change on resume
    for option in (["--pooling", "mean"], ["--metric", "macro_f1"], ["--val-fraction", "0.2"]):
        result = invoke("classify", "train", "--out", str(tmp_path / "parts"), "--resume", "--max-steps", "30",
                        *option)  # fmt: skip
        assert_user_error(result, option[0], "cannot change when resuming")
    done = run_cli("classify", "train", "--out", str(tmp_path / "parts"), "--resume", "--max-steps", "30",
                   "--hidden", "16", cwd=tmp_path, env=child_env())  # fmt: skip
    assert_user_error(done, "--hidden cannot change when resuming")
    assert (tmp_path / "parts" / "metrics.jsonl").read_bytes() == before


def test_a_run_stopped_midway_resumes_from_the_cli_to_the_same_weights(tmp_path):
    """A real interruption (should_stop, as Ctrl-C sets it) at step 10 of 20, resumed by
    `charlm classify train --resume` with no other option, ends where the run that never stopped does."""
    data = write_tsv(tmp_path / "texts.tsv", examples(100, seed=15))
    shape = dict(dropout=0.3, pooling="concat")
    whole = start_run(tmp_path / "whole", data, shape=shape, max_steps=20, eval_every=5).trainer()
    assert whole.run().reason == "max_steps"
    whole.close()
    calls: list = []
    stopped = start_run(tmp_path / "stopped", data, shape=shape, max_steps=20, eval_every=5)
    trainer = stopped.trainer(should_stop=lambda: calls.append(1) or len(calls) > 10)
    result = trainer.run()
    trainer.close()
    assert (result.reason, result.step) == ("interrupted", 10)
    train_cli("--out", str(tmp_path / "stopped" / "run"), "--resume")
    assert end_event(tmp_path / "stopped" / "run")["step"] == 20
    a, b = weights_of(tmp_path / "whole" / "run"), weights_of(tmp_path / "stopped" / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = weights_of(tmp_path / "whole" / "run", BEST), weights_of(tmp_path / "stopped" / "run", BEST)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----- selection and early stopping ---------------------------------------------------------------


def test_macro_f1_selects_the_best_checkpoint(tmp_path):
    rows = examples(150, seed=8, labels="abc", weights=[6, 2, 1])
    data = write_tsv(tmp_path / "texts.tsv", rows)
    run = tmp_path / "run"
    train_cli("--data", str(data), "--out", str(run), *QUICK, "--max-steps", "24", "--eval-every", "3",
              "--metric", "macro_f1", "--val-fraction", "0.3", "--lr", "0.002")  # fmt: skip
    assert read_config(run)["classify"]["metric"] == "macro_f1"
    evals = of_kind(read_events(run), "eval")
    assert len(evals) == 8
    best = None
    for e in evals:
        assert e["selection_loss"] == pytest.approx(1.0 - e["macro_f1"])
        assert e["best"] == (best is None or e["macro_f1"] > best)
        best = e["macro_f1"] if best is None else max(best, e["macro_f1"])
    chosen = [e["step"] for e in evals if e["best"]][-1]
    assert RunDirectory(run).checkpoint_metadata(BEST)["step"] == chosen


def character_counter(run: ClassifierRun, head: dict[str, dict[str, float]]) -> SequenceClassifier:
    """A real classifier with weights set by hand: a one-layer ReLU RNN whose state is the
    one-hot of the current character (identity input weights, no recurrence), mean-pooled
    into each character's share of the text, then a head scoring class k by
    sum(head[k][char] * share of char)."""
    tokenizer = run.data.tokenizer
    V, labels = tokenizer.vocab_size, run.data.splits.labels
    config = ClassifierConfig(vocab_size=V, labels=labels, cell="rnn-relu", layers=1, hidden=V, embed=V,
                              dropout=0.0, bidirectional=False, pooling="mean")  # fmt: skip
    model = SequenceClassifier(config).eval()
    with torch.no_grad():
        for value in model.parameters():
            value.zero_()
        model.embedding.weight.copy_(torch.eye(V))
        model.rnn.weight_ih_l0.copy_(torch.eye(V))
        for k, label in enumerate(labels):
            for char, weight in head.get(label, {}).items():
                model.head.weight[k, int(tokenizer.encode(char)[0])] = weight
    return model


def test_the_selection_follows_the_chosen_metric_where_accuracy_and_macro_f1_disagree(tmp_path):
    """Two hand-built classifiers validated in turn: the first is more accurate (it calls every
    c text b), the second has the better macro-F1 (it gets every class, at a cost on a). The best
    and the patience follow the chosen metric."""
    data = write_tsv(tmp_path / "texts.tsv", examples(150, seed=8, labels="abc", weights=[6, 2, 1]))
    accurate = {"a": {"a": 1, "x": 1}, "b": {"b": 1, "y": 1, "c": 1, "z": 1}}
    balanced = {"a": {"a": 1}, "b": {"b": 1, "y": 1}, "c": {"c": 1, "z": 1, "x": 1}}  # a text with more x: c
    for metric in ("accuracy", "macro_f1"):
        run = start_run(tmp_path / metric, data, {"metric": metric, "patience": 1}, val_fraction=0.3)
        task = run.trainer().task
        first = task.validate(character_counter(run, accurate))
        second = task.validate(character_counter(run, balanced))
        assert first["accuracy"] > second["accuracy"] and first["macro_f1"] < second["macro_f1"]  # they disagree
        for figures in (first, second):
            assert figures["selection_loss"] == pytest.approx(1.0 - figures[metric])
        if metric == "accuracy":  # the second did not improve: one validation without, patience 1 is spent
            assert (task.best_metric, task.evals_since_best, task.stop_reason()) == (first["accuracy"], 1, "early_stop")
        else:
            assert (task.best_metric, task.evals_since_best, task.stop_reason()) == (second["macro_f1"], 0, None)


def test_patience_stops_the_run_and_it_cannot_be_resumed(tmp_path):
    data = write_tsv(tmp_path / "texts.tsv", examples(120, seed=2))
    run = tmp_path / "run"
    train_cli("--data", str(data), "--out", str(run), *QUICK, "--max-steps", "400", "--eval-every", "10",
              "--patience", "1", "--lr", "0.01")  # fmt: skip
    end = end_event(run)
    evals = of_kind(read_events(run), "eval")
    assert end["reason"] == "early_stop" and end["step"] < 400
    assert evals[-1]["step"] == end["step"] and not evals[-1]["best"]  # one validation without improvement
    assert all(e["best"] for e in evals[:-1])  # each one before it improved
    result = invoke("classify", "train", "--out", str(run), "--resume", "--max-steps", "800")
    assert_user_error(result, "stopped early", alone=False)


# ----- class weights -------------------------------------------------------------------------------


def start_run(tmp_path: Path, data: Path, classify: dict | None = None, shape: dict | None = None,
              given=(), **train) -> ClassifierRun:  # fmt: skip
    """A run set up through the library as `charlm classify train` sets it up (not trained)."""
    options = {**dict(data=str(data), max_steps=4, batch_size=8, threads=1, device="cpu", precision="fp32",
                      log_every=1), **train}  # fmt: skip
    base_shape = dict(cell="lstm", layers=1, hidden=12, embed=8, dropout=0.0, bidirectional=True, pooling="mean")
    given = set(given) | set(train) | set(classify or {}) | set(shape or {})  # what a user would have typed
    run = ClassifierRun.start(options, classify or {}, {**base_shape, **(shape or {})}, given,
                              out=tmp_path / "run")  # fmt: skip
    run.prepare_data()
    run.open_run_directory()
    return run


def test_auto_class_weights_are_the_inverse_frequency(tmp_path):
    rows = examples(200, seed=4, labels="abc", weights=[10, 3, 1])
    data = write_tsv(tmp_path / "texts.tsv", rows)
    run = start_run(tmp_path, data, {"class_weights": "auto"})
    trainer = run.trainer()
    task = trainer.task
    counts = np.bincount(run.data.train.labels, minlength=3)
    assert counts[0] > 3 * counts[2] > 0
    weights = task.class_weights.numpy()
    assert weights == pytest.approx(len(run.data.train) / (3 * counts), rel=1e-6)
    assert weights * counts == pytest.approx(np.full(3, weights[0] * counts[0]), rel=1e-6)  # inverse frequency
    # the loss of a batch weighs each text by its class's weight
    x, lengths, labels = task.batch(0, 0)
    model = trainer.model.eval()
    with torch.no_grad():
        loss = float(task.loss(model, (x, lengths, labels)))
        nll = F.cross_entropy(model(x, lengths), labels, reduction="none")
    w = task.class_weights[labels]
    assert loss == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-5)
    assert loss != pytest.approx(float(nll.mean()), rel=1e-4) or len(set(labels.tolist())) == 1
    model.train()
    result = trainer.run()
    trainer.close()
    assert result.reason == "max_steps"
    assert all(np.isfinite(e["loss"]) for e in of_kind(read_events(tmp_path / "run"), "train"))
    assert read_config(tmp_path / "run")["classify"]["class_weights"] == "auto"


# ----- transfer from a language model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A tiny two-layer LSTM language model trained by `charlm train` (in this process, which
    saves a child's start-up) on the classifiers' characters, its token cache in its own folder."""
    root = tmp_path_factory.mktemp("lm")
    text = "\n".join(text for text, _ in examples(300, seed=9, labels="abc")) + "\n"
    (root / "texts.txt").write_text(text, encoding="utf-8")
    env = {"CHARLM_DATA_DIR": str(root / "data"), "CHARLM_CACHE_DIR": str(root / "cache")}
    result = invoke("train", "--data", str(root / "texts.txt"), "--out", str(root / "lm"), "--max-steps", "5",
                    "--hidden", "16", "--embed", "8", "--layers", "2", "--no-auto-size", "--threads", "1",
                    "--batch-size", "4", "--seq-len", "16", "--eval-every", "5", "--sample-length", "0",
                    "--device", "cpu", "--precision", "fp32", "--dropout", "0", env=env)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return root / "lm"


def lm_weights_used(lm: Path, classifier: Path) -> dict[str, torch.Tensor]:
    which = read_config(classifier)["classify"]["lm_checkpoint"]
    assert which in (BEST, LAST)
    return checkpoint_weights(lm, which)


@pytest.mark.parametrize("direction", ["--unidirectional", "--bidirectional"])
def test_from_lm_starts_from_the_language_models_weights_and_freezes_them(tmp_path, lm_run, direction):
    data = write_tsv(tmp_path / "texts.tsv", examples(80, seed=6))
    run = tmp_path / "run"
    train_cli("--data", str(data), "--out", str(run), "--from-lm", str(lm_run), direction, "--threads", "1",
              "--batch-size", "8", "--max-steps", "6", "--freeze-epochs", "100", "--lm-lr-factor", "0.5",
              "--device", "cpu", "--precision", "fp32", "--warmup-steps", "1")  # fmt: skip
    config = read_config(run)
    assert config["model"]["hidden"] == 16 and config["model"]["embed"] == 8 and config["model"]["layers"] == 2
    assert config["classify"]["from_lm"] == str(lm_run.resolve())
    assert config["model"]["bidirectional"] == (direction == "--bidirectional")
    assert json.loads((run / "tokenizer.json").read_text()) == json.loads((lm_run / "tokenizer.json").read_text())
    lm = lm_weights_used(lm_run, run)
    ours = weights_of(run)
    # frozen for the whole run: the transferred weights are still the language model's
    assert torch.equal(ours["embedding.weight"], lm["embedding.weight"])
    for name in (n for n in lm if n.startswith("rnn.")):
        if direction == "--unidirectional":
            assert torch.equal(ours[name], lm[name]), name
        else:
            kind, layer = name[len("rnn.") :].rsplit("_l", 1)
            target = ours[f"forward_layers.{layer}.{kind}_l0"]
            if kind == "weight_ih" and layer != "0":
                assert torch.equal(target[:, :16], lm[name]) and bool((target[:, 16:] == 0).all())
            else:
                assert torch.equal(target, lm[name]), name
    assert float(ours["head.bias"].abs().sum()) > 0  # the head (zero bias at the start) trained
    start = of_kind(read_events(run), "start")[0]
    assert "embedding.weight" in start["transferred"]


def test_from_lm_transferred_layers_train_once_unfrozen(tmp_path, lm_run):
    data = write_tsv(tmp_path / "texts.tsv", examples(80, seed=6))
    run = tmp_path / "run"
    train_cli("--data", str(data), "--out", str(run), "--from-lm", str(lm_run), "--unidirectional",
              "--threads", "1", "--batch-size", "8", "--max-steps", "3", "--lm-lr-factor", "0.5",
              "--device", "cpu", "--precision", "fp32", "--warmup-steps", "1")  # fmt: skip
    lm, ours = lm_weights_used(lm_run, run), weights_of(run)
    assert not torch.equal(ours["rnn.weight_hh_l0"], lm["rnn.weight_hh_l0"])


def test_from_lm_refuses_contradicting_options_and_sources_that_are_no_language_model(tmp_path, lm_run):
    data = write_tsv(tmp_path / "texts.tsv", examples(40, seed=6))
    base = ["classify", "train", "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "2",
            "--threads", "1", "--device", "cpu"]  # fmt: skip
    for option, value in (("--hidden", "16"), ("--tokenizer", "char"), ("--layers", "2"), ("--cell", "gru")):
        result = invoke(*base, "--from-lm", str(lm_run), option, value)
        assert_user_error(result, f"{option} cannot be given with --from-lm")
        assert not (tmp_path / "run").exists()
    classifier = tmp_path / "classifier"
    train_cli("--data", str(data), "--out", str(classifier), *QUICK, "--max-steps", "1")
    result = invoke(*base, "--from-lm", str(classifier))
    assert_user_error(result, "is a classifier run")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke(*base, "--from-lm", str(tmp_path / "empty")), "empty", "is not a charlm run")
    assert_user_error(invoke(*base, "--from-lm", str(tmp_path / "nowhere")), "nowhere", "does not exist")
    assert not (tmp_path / "run").exists()


# ----- user errors -------------------------------------------------------------------------------------


def _one_class(folder: Path) -> Path:
    return write_tsv(folder / "one.tsv", [(text, "a") for text, _ in examples(20)])


def _no_label_field(folder: Path) -> Path:
    path = folder / "data.csv"
    path.write_text("text,kind\n" + "".join(f"{t},{lab}\n" for t, lab in examples(20)), encoding="utf-8")
    return path


def _binary(folder: Path) -> Path:
    path = folder / "data.tsv"
    path.write_bytes(b"text\tlabel\n" + bytes(range(256)) * 8)
    return path


ERRORS = {
    "one class": (_one_class, [], ["one.tsv", "only one label 'a'", "at least two classes"]),
    "no label field": (_no_label_field, [], ["no label field", "text, kind"]),
    "binary": (_binary, [], ["data.tsv", "looks like a binary file"]),
    "freeze without from-lm": (
        lambda folder: write_tsv(folder / "d.tsv", examples(20)),
        ["--freeze-epochs", "1"],
        ["needs --from-lm"],
    ),  # fmt: skip
    "no such data": (lambda folder: folder / "missing.tsv", [], ["no such file or folder", "missing.tsv"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line_and_leave_no_run(tmp_path, case):
    make_data, options, needles = ERRORS[case]
    data = make_data(tmp_path)
    run = tmp_path / "run"
    result = invoke("classify", "train", "--data", str(data), "--out", str(run), *QUICK, "--max-steps", "2",
                    *options)  # fmt: skip
    assert_user_error(result, *needles)
    assert not run.exists() and not (tmp_path / "runs").exists()


def test_data_is_needed_unless_resuming(tmp_path):
    assert_user_error(invoke("classify", "train", "--max-steps", "2"), "Missing option '--data'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_user_error_from_the_real_cli(tmp_path):
    data = _no_label_field(tmp_path)
    done = run_cli("classify", "train", "--data", str(data), "--max-steps", "2", cwd=tmp_path, env=child_env())
    assert_user_error(done, "no label field", "its columns are: text, kind")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


# ----- text length ----------------------------------------------------------------------------------


def test_max_length_keeps_the_head_or_the_tail(tmp_path):
    texts = ["abcdefghij", "xyz", "0123456789abcdef"]
    tokenizer = build_tokenizer("char", texts)
    whole = encode_texts(texts, tokenizer, ["p", "q", "p"], ["p", "q"])
    assert whole.lengths.tolist() == [10, 3, 16] and whole.labels.tolist() == [0, 1, 0]
    for keep, cut in (("head", lambda ids: ids[:5]), ("tail", lambda ids: ids[-5:])):
        short = encode_texts(texts, tokenizer, ["p", "q", "p"], ["p", "q"], max_length=5, keep=keep)
        assert short.lengths.tolist() == [5, 3, 5]
        for i, text in enumerate(texts):
            assert short.example(i).tolist() == cut(list(tokenizer.encode(text))), (keep, text)
    assert tokenizer.decode(encode_texts(texts, tokenizer, max_length=4, keep="tail").example(2).tolist()) == "cdef"
    assert encode_texts(texts, tokenizer, labels=["p", "r", "q"], classes=["p", "q"]).labels.tolist() == [0, -1, 1]


def test_max_length_from_the_cli_cuts_the_training_texts(tmp_path):
    rows = [("x" * 30 + text, label) for text, label in examples(60, seed=1)]
    data = write_tsv(tmp_path / "texts.tsv", rows)
    run = start_run(tmp_path, data, {"max_length": 6, "keep": "tail"})
    assert int(run.data.train.lengths.max()) == 6
    for i, text in enumerate(run.data.splits.train.texts):
        assert run.data.train.example(i).tolist() == list(run.data.tokenizer.encode(text))[-6:]


def test_a_one_direction_model_reads_texts_longer_than_its_window(tmp_path, monkeypatch):
    data = write_tsv(tmp_path / "texts.tsv", examples(60, seed=12, lengths=(20, 60)))
    options = [*QUICK, "--unidirectional", "--dropout", "0", "--max-steps", "6", "--pooling", "attention",
               "--layers", "2"]  # fmt: skip
    train_cli("--data", str(data), "--out", str(tmp_path / "wide"), *options)
    monkeypatch.setattr(SequenceClassifier, "window", 8)
    train_cli("--data", str(data), "--out", str(tmp_path / "narrow"), *options)
    wide, narrow = weights_of(tmp_path / "wide"), weights_of(tmp_path / "narrow")
    for name in wide:  # the same training, to rounding: the windows change how, not what, it computes
        torch.testing.assert_close(narrow[name], wide[name], atol=1e-5, rtol=1e-4)
    model = load(tmp_path / "narrow")
    rows = examples(60, seed=12, lengths=(20, 60))
    encoded = encode_texts([text for text, _ in rows], RunDirectory(tmp_path / "narrow").load_tokenizer())
    x, lengths = pad(encoded, list(range(len(rows))))
    assert int(lengths.min()) > 8
    with torch.no_grad():
        windowed = model(x, lengths)
        model.window = 1000
        whole = model(x, lengths)
    torch.testing.assert_close(windowed, whole, atol=1e-5, rtol=0)
