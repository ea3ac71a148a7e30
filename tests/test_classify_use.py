"""Using a trained classifier: the Python `Classifier` and `charlm classify evaluate` / `predict`.

Three tiny runs are trained for real once per module (about a second each): an attention
run with one direction (two classes, texts cut to their last 16 characters), a two-direction
concat run with three classes, one of them "[c]" (rich would read it as markup), cut to the
first 12, and a language model, which the classifier commands must refuse.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error, invoke, run_cli, train_tiny_run, word_text, write_text

from charlm.errors import CharlmError, OptionError
from charlm.inference.classification_metrics import class_report
from charlm.inference.classifier import Classifier
from charlm.tasks.classify_run import ClassifierRun
from charlm.text.labelled import LabelledTexts

LETTER = {"a": "a", "b": "b", "[c]": "c"}


def examples(labels, count: int, seed: int) -> list[tuple[str, str]]:
    """(label, text) pairs: each text mostly its class's letter, with some noise, 1 to 40 long."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.choice(labels)
        letter = LETTER[label]
        out.append(
            (label, "".join(rng.choice(letter * 4 + "xy ") for _ in range(rng.randint(1, 40))).strip() or letter)
        )
    return out


def tsv(path: Path, rows) -> Path:
    return write_text(path, "".join(f"{label}\t{text}\n" for label, text in rows))


def train_classifier(root: Path, name: str, labels, shape: dict, classify: dict, steps: int = 40) -> Path:
    data = tsv(root / f"{name}.tsv", examples(labels, 240, seed=len(name)))
    train = dict(data=str(data), max_steps=steps, batch_size=16, lr=1e-2, warmup_steps=2, device="cpu",
                 precision="fp32", threads=1, log_every=100, checkpoint_every=None, checkpoint_seconds=None,
                 sample_length=0, val_fraction=0.1, seed=5)  # fmt: skip
    previous = torch.get_num_threads()
    try:
        run = ClassifierRun.start(train, classify, shape, set(shape) | {"max_steps"}, out=root / name)
        run.prepare_data()
        run.open_run_directory()
        trainer = run.trainer()
        try:
            result = trainer.run()
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(previous)
    assert result.step == steps
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classify-use")
    tiny = dict(hidden=16, embed=8, layers=1, dropout=0.0)
    return {
        "attention": train_classifier(
            root,
            "attention",
            ["a", "b"],
            dict(tiny, pooling="attention", bidirectional=False),
            dict(max_length=16, keep="tail"),
        ),  # fmt: skip
        "concat": train_classifier(
            root,
            "concat3",
            ["a", "b", "[c]"],
            dict(tiny, pooling="concat", bidirectional=True),
            dict(max_length=12, keep="head"),
        ),  # fmt: skip
        "lm": train_tiny_run(
            root / "lm",
            word_text(3000),
            max_steps=2,
            batch_size=2,
            seq_len=8,
            eval_every=1000,
            checkpoint_every=1000,
            log_every=1,
        ),  # fmt: skip
    }


@pytest.fixture(scope="module")
def attention(runs) -> Classifier:
    return Classifier(runs["attention"], device="cpu")


@pytest.fixture(scope="module")
def concat(runs) -> Classifier:
    return Classifier(runs["concat"], device="cpu")


MIXED = ["a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "aaa b", "xy", "b" * 7, "a" * 30 + "y", "ba", "a b a b a"]


# ----- Python ---------------------------------------------------------------------------------


def test_predict_is_in_input_order_and_batching_changes_nothing(runs, attention, concat):
    for classifier in (attention, concat):
        together = classifier.predict(MIXED)
        assert [p.text for p in together] == MIXED
        alone = np.stack([classifier.probabilities([text])[0] for text in MIXED])
        small_batches = Classifier(classifier.path, device="cpu", batch_size=3).probabilities(MIXED)
        for i, prediction in enumerate(together):
            row = np.array([prediction.probabilities[label] for label in classifier.labels])
            assert row.sum() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(row, alone[i], atol=1e-5)
            np.testing.assert_allclose(row, small_batches[i], atol=1e-5)
            assert prediction.label == classifier.labels[int(row.argmax())]
            assert prediction.probability == pytest.approx(row.max())
            assert prediction.top == [(prediction.label, prediction.probability)]
            assert prediction.attention is None
    assert [p.label for p in attention.predict(["aaaaaaaaaa", "bbbbbbbbbb"])] == ["a", "b"]
    assert attention.labels == ["a", "b"] and concat.labels == ["[c]", "a", "b"]  # natural sort order
    assert attention.checkpoint in ("best", "last")


def test_top_k_gives_the_best_labels_in_order(concat):
    for prediction in concat.predict(MIXED, top=3):
        assert [label for label, _ in prediction.top] == sorted(
            concat.labels, key=lambda label: -prediction.probabilities[label]
        )
        assert prediction.top[0] == (prediction.label, prediction.probability)
    assert all(len(p.top) == 2 for p in concat.predict(MIXED, top=2))
    for bad in (0, 4, -1):
        with pytest.raises(OptionError, match="from 1 to 3, the number of classes"):
            concat.predict(["a"], top=bad)


def test_texts_are_cut_as_in_training(attention, concat):
    long = "b" * 50 + "a" * 16  # the attention run keeps the last 16 tokens, the concat run the first 12
    np.testing.assert_allclose(attention.probabilities([long]), attention.probabilities([long[-16:]]), atol=1e-6)
    np.testing.assert_allclose(concat.probabilities([long]), concat.probabilities([long[:12]]), atol=1e-6)
    assert not np.allclose(attention.probabilities([long]), attention.probabilities([long[:16]]), atol=1e-3)


def test_explain_gives_each_tokens_weight(attention, concat):
    texts = ["a", "aab ab", "b" * 40 + "xyz"]  # the last is cut to its last 16 characters
    for text, prediction in zip(texts, attention.predict(texts, explain=True)):
        tokens = [token for token, _ in prediction.attention]
        assert "".join(tokens) == text[-16:]
        weights = np.array([weight for _, weight in prediction.attention])
        assert weights.sum() == pytest.approx(1.0, abs=1e-5) and (weights >= 0).all()
        assert prediction.to_dict()["attention"] == [[t, w] for t, w in prediction.attention]
    with pytest.raises(OptionError, match="needs a run trained with --pooling attention; .* pools with concat"):
        concat.predict(["a"], explain=True)


def test_bad_texts_are_refused_with_their_position(attention):
    with pytest.raises(CharlmError, match="text 2 is empty"):
        attention.predict(["a", "", "b"])
    with pytest.raises(CharlmError, match="not one string"):
        attention.predict("aaa")
    with pytest.raises(CharlmError, match="text 2 is a int"):
        attention.predict(["a", 3])
    assert attention.predict([]) == [] and attention.probabilities([]).shape == (0, 2)


def test_evaluate_gives_class_report_of_the_predictions(tmp_path, concat):
    rows = examples(["a", "b", "[c]"], 60, seed=99)
    result = concat.evaluate(tsv(tmp_path / "test.tsv", rows))
    texts, labels = [t for _, t in rows], [label for label, _ in rows]
    probabilities = concat.probabilities(texts)
    truth = [concat.labels.index(label) for label in labels]
    expected = class_report(truth, probabilities.argmax(axis=1), concat.labels)
    assert result.report == expected
    assert result.examples == 60 and result.unknown == {} and result.left_out == 0
    nll = -np.log(probabilities[np.arange(60), truth]).mean()
    assert result.loss == pytest.approx(nll, abs=1e-4)
    as_dict = result.to_dict()
    assert as_dict["accuracy"] == expected.accuracy and as_dict["confusion"] == expected.confusion
    assert concat.evaluate(LabelledTexts(texts, labels, "in memory")).report == expected


def test_evaluate_reports_unknown_labels_and_leaves_them_out(tmp_path, attention):
    known = examples(["a", "b"], 20, seed=3)
    rows = known + [("zzz", "aaa")] * 3 + [("qq", "bb")]
    result = attention.evaluate(tsv(tmp_path / "mixed.tsv", rows))
    assert result.unknown == {"zzz": 3, "qq": 1} and result.left_out == 4
    assert result.examples == 20
    truth = [attention.labels.index(label) for label, _ in known]
    predicted = attention.probabilities([t for _, t in known]).argmax(axis=1)
    assert result.report == class_report(truth, predicted, attention.labels)
    with pytest.raises(CharlmError, match="none of the 4 examples .* has a label the run knows"):
        attention.evaluate(tsv(tmp_path / "none.tsv", [("zzz", "a")] * 3 + [("qq", "b")]))


# ----- charlm classify evaluate -----------------------------------------------------------------


@pytest.fixture(scope="module")
def test_file(runs) -> Path:
    return tsv(runs["concat"].parent / "held-out.tsv", examples(["a", "b", "[c]"], 50, seed=7))


def test_evaluate_prints_figures_and_tables(runs, concat, test_file):
    result = invoke("classify", "evaluate", str(runs["concat"]), "--data", str(test_file), "--threads", "1")
    assert result.exit_code == 0, result.stderr
    expected = concat.evaluate(test_file).report
    out = result.stdout
    assert re.search(rf"accuracy +{expected.accuracy:.4f} *\n", out)
    assert f"{expected.macro_f1:.4f}" in out and "confusion matrix" in out
    for row in expected.per_class:  # "[c]" is shown as it is, not read as markup
        assert f"{row['label']}" in out and f"{row['f1']:.4f}" in out
    assert out.count("[c]") == 3  # its per-class row, its confusion column and row
    assert "checkpoint of" in result.stderr and "warning" not in result.stderr


def test_evaluate_json_and_unknown_labels(tmp_path, runs, concat):
    rows = examples(["a", "b", "[c]"], 30, seed=11) + [("other", "aaa"), ("other", "bb")]
    data = tsv(tmp_path / "with-unknown.tsv", rows)
    result = invoke("classify", "evaluate", str(runs["concat"]), "--data", str(data), "--json")
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    expected = concat.evaluate(data)
    assert figures["accuracy"] == expected.report.accuracy and figures["examples"] == 30
    assert figures["unknown_labels"] == {"other": 2} and figures["labels"] == ["[c]", "a", "b"]
    assert figures["loss"] == pytest.approx(expected.loss)
    for key in ("macro_f1", "per_class", "confusion", "checkpoint", "seconds", "texts_per_s"):
        assert key in figures
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "2 example(s)" in warning[0] and "'other': 2" in warning[0]
    assert "left out" in warning[0]


@pytest.mark.slow
def test_evaluate_json_in_a_real_process(runs, concat, test_file):
    done = run_cli("classify", "evaluate", str(runs["concat"]), "--data", str(test_file), "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == concat.evaluate(test_file).report.accuracy


# ----- charlm classify predict ------------------------------------------------------------------


def plain_lines(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines()]


def test_predict_arguments_plain_and_top(runs, concat):
    texts = ["aaaa", "b\tb", "ccc c"]
    result = invoke("classify", "predict", str(runs["concat"]), *texts)
    assert result.exit_code == 0, result.stderr
    expected = concat.predict(texts)
    rows = plain_lines(result.stdout)
    assert [row[0] for row in rows] == [p.label for p in expected]
    assert [float(row[1]) for row in rows] == pytest.approx([p.probability for p in expected], abs=1e-4)
    assert [row[2] for row in rows] == ["aaaa", "b\\tb", "ccc c"]  # a tab in a text is shown as \t
    result = invoke("classify", "predict", str(runs["concat"]), *texts, "--top", "3")
    for row, prediction in zip(plain_lines(result.stdout), concat.predict(texts, top=3)):
        assert row[0:6:2] == [label for label, _ in prediction.top] and len(row) == 7


def test_predict_data_file_skips_blank_lines(tmp_path, runs, concat):
    data = write_text(tmp_path / "texts.txt", "aaa\n\nbbbb\n   \nccc\n")
    result = invoke("classify", "predict", str(runs["concat"]), "--data", str(data), "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == ["aaa", "bbbb", "ccc"]
    for record, prediction in zip(records, concat.predict(["aaa", "bbbb", "ccc"])):
        assert record["label"] == prediction.label
        assert record["probabilities"] == pytest.approx(prediction.probabilities)
        assert set(record["probabilities"]) == {"a", "b", "[c]"} and "attention" not in record
    assert "skipped 2 blank line(s)" in result.stderr


def test_predict_streams_many_texts_in_input_order(monkeypatch, runs, attention):
    from charlm.cli import classify_use

    monkeypatch.setattr(classify_use, "STREAM_TEXTS", 7)  # many groups of texts, each batched inside
    texts = [text for _, text in examples(["a", "b"], 40, seed=5)]
    result = invoke("classify", "predict", str(runs["attention"]), "--data", "-", input="\n".join(texts) + "\n")
    assert result.exit_code == 0, result.stderr
    rows = plain_lines(result.stdout)
    assert [row[2] for row in rows] == texts
    assert [row[0] for row in rows] == [p.label for p in attention.predict(texts)]


def test_predict_json_lines_field_and_explain(tmp_path, runs, attention):
    data = write_text(tmp_path / "texts.jsonl", "".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in
                                                          enumerate(["aaa", "bab"])))  # fmt: skip
    result = invoke("classify", "predict", str(runs["attention"]), "--data", str(data), "--text-field", "body",
                    "--json", "--explain")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == ["aaa", "bab"]
    for record in records:
        assert "".join(token for token, _ in record["attention"]) == record["text"]
        assert sum(w for _, w in record["attention"]) == pytest.approx(1.0, abs=1e-5)
    plain = invoke("classify", "predict", str(runs["attention"]), "aab", "--explain")
    assert plain.stdout.splitlines()[1].startswith("  attention: ")


@pytest.mark.slow
def test_predict_stdin_in_a_real_process(runs, attention):
    done = run_cli("classify", "predict", str(runs["attention"]), "--data", "-", "--json", "--top", "2",
                   "--threads", "1", stdin=b"aaaa\nbbbb\n\nab\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in records] == ["aaaa", "bbbb", "ab"]
    assert [r["label"] for r in records] == [p.label for p in attention.predict(["aaaa", "bbbb", "ab"])]
    assert all(len(r["top"]) == 2 for r in records)
    assert "skipped 1 blank line(s) of stdin" in done.stderr


# ----- errors: one line, a non-zero exit ---------------------------------------------------------


def test_predict_errors(tmp_path, runs):
    cls = str(runs["concat"])
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02 not text" * 20)
    jsonl = write_text(tmp_path / "t.jsonl", '{"body": "aaa"}\n')
    texts = write_text(tmp_path / "t.txt", "aaa\n")
    cases = [
        (("classify", "predict", str(runs["lm"]), "aaa"), "is a language-model run, not a classifier"),
        (("classify", "predict", cls), "no texts to classify"),
        (("classify", "predict", cls, "aaa", "--data", str(texts)), "as arguments or with --data, not both"),
        (("classify", "predict", cls, "aaa", "--top", "0"), "--top must be at least 1"),
        (("classify", "predict", cls, "aaa", "--top", "4"), "--top must be from 1 to 3, the number of classes"),
        (("classify", "predict", cls, "--data", str(jsonl)), "no text field"),
        (("classify", "predict", cls, "--data", str(jsonl), "--text-field", "text"), "no text field 'text'"),
        (("classify", "predict", cls, "--data", str(binary)), "looks like a binary file"),
        (("classify", "predict", cls, "aaa", ""), "text 2 is empty"),
        (("classify", "predict", cls, "aaa", "--explain"), "--explain needs a run trained with --pooling attention"),
        (("classify", "predict", cls, "aaa", "--text-field", "x"), "--text-field goes with --data"),
        (("classify", "predict", cls, "--data", str(tmp_path / "missing.txt")), "missing.txt"),
    ]
    for args, needle in cases:
        assert_user_error(invoke(*args), needle)


def test_evaluate_errors(tmp_path, runs):
    binary = tmp_path / "blob.tsv"
    binary.write_bytes(b"\x00\x01\x02 not text" * 20)
    unknown = tsv(tmp_path / "unknown.tsv", [("x", "aaa"), ("y", "bbb")])
    good = tsv(tmp_path / "good.tsv", [("a", "aaa"), ("b", "bbb")])
    cls = str(runs["concat"])
    cases = [
        (("classify", "evaluate", str(runs["lm"]), "--data", str(good)), "is a language-model run"),
        (("classify", "evaluate", cls, "--data", str(binary)), "looks like a binary file"),
        (("classify", "evaluate", cls, "--data", str(unknown)), "none of the 2 examples"),
        (("classify", "evaluate", cls), "Missing option '--data'"),
        (("classify", "evaluate", cls, "--data", str(good), "--text-field", "body"), "no named fields"),
    ]
    for args, needle in cases:
        assert_user_error(invoke(*args), needle)


@pytest.mark.slow
def test_a_language_model_run_is_refused_in_a_real_process(runs):
    done = run_cli("classify", "predict", str(runs["lm"]), "some text")
    error = assert_user_error(done, "is a language-model run, not a classifier", status=1)
    assert "charlm classify train" in error


def test_options_come_from_the_environment(runs, concat):
    texts = ["aaa", "bb"]
    result = invoke("classify", "predict", str(runs["concat"]), *texts, env={"CHARLM_CLASSIFY_PREDICT_TOP": "2"})
    assert result.exit_code == 0, result.stderr
    assert [len(row) for row in plain_lines(result.stdout)] == [5, 5]
    bad = invoke("classify", "predict", str(runs["concat"]), "aaa", env={"CHARLM_CLASSIFY_PREDICT_TOP": "4"})
    assert_user_error(bad, "--top must be from 1 to 3", "CHARLM_CLASSIFY_PREDICT_TOP")
