"""class_report: accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix.

Small cases are computed by hand; random ones are checked against scikit-learn where it is
installed (a benchmark-only dependency, never charlm's).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from charlm.errors import CharlmError
from charlm.inference.classification_metrics import class_report


def test_a_small_case_computed_by_hand():
    # truth:     a a a b b c
    # predicted: a a b b c c
    report = class_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert report.examples == 6
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    a, b, c = report.per_class
    assert (a["label"], a["support"], a["precision"], a["recall"]) == ("a", 3, 1.0, pytest.approx(2 / 3))
    assert a["f1"] == pytest.approx(0.8)  # 2*1*(2/3) / (1 + 2/3)
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == (0.5, 0.5, 0.5, 2)
    assert (c["precision"], c["recall"], c["support"]) == (0.5, 1.0, 1)
    assert c["f1"] == pytest.approx(2 / 3)
    assert report.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_perfect_predictions():
    truth = [2, 0, 1, 1, 0, 2, 2]
    report = class_report(truth, truth, ["x", "y", "z"])
    assert report.accuracy == 1.0 and report.macro_f1 == 1.0
    assert all(row["precision"] == row["recall"] == row["f1"] == 1.0 for row in report.per_class)
    assert report.confusion == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]


def test_all_wrong_predictions():
    report = class_report([0, 0, 1, 1], [1, 1, 0, 0], ["neg", "pos"])
    assert report.accuracy == 0.0 and report.macro_f1 == 0.0
    assert report.confusion == [[0, 2], [2, 0]]
    assert all(row["f1"] == 0.0 for row in report.per_class)


def test_a_class_never_predicted_has_precision_zero_and_counts_in_macro_f1():
    # c occurs twice in the truth and is never predicted
    report = class_report([0, 1, 2, 2], [0, 1, 0, 1], ["a", "b", "c"])
    c = report.per_class[2]
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 2)
    # a: precision 1/2, recall 1 -> 2/3; b likewise; c: 0
    assert report.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_a_label_neither_true_nor_predicted_is_left_out_of_macro_f1():
    report = class_report([0, 1, 1], [0, 1, 1], ["a", "b", "rare"])
    assert report.macro_f1 == 1.0  # averaged over a and b only
    assert report.per_class[2] == {"label": "rare", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report.confusion[2] == [0, 0, 0] and [row[2] for row in report.confusion] == [0, 0, 0]


def test_a_label_only_predicted_counts_in_macro_f1():
    report = class_report([0, 0], [0, 1], ["a", "b"])
    assert report.per_class[1]["support"] == 0 and report.per_class[1]["f1"] == 0.0
    assert report.macro_f1 == pytest.approx((2 / 3 + 0) / 2)


def test_to_dict_is_plain_json():
    report = class_report(np.array([0, 1, 1], dtype=np.int32), np.array([0, 1, 0], dtype=np.int64), ["a", "b"])
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert type(data["accuracy"]) is float and type(data["examples"]) is int
    assert type(data["confusion"][0][0]) is int and type(data["per_class"][0]["support"]) is int
    assert data["labels"] == ["a", "b"] and data["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "truth, predicted, labels, words",
    [
        ([], [], ["a"], "at least one example"),
        ([0], [0], [], "at least one label"),
        ([0, 1], [0], ["a", "b"], "2 examples but predicted_ids has 1"),
        ([0, 2], [0, 1], ["a", "b"], "class id 2, outside 0..1"),
        ([0, -1], [0, 1], ["a", "b"], "class id -1"),
        ([0.0, 1.0], [0, 1], ["a", "b"], "integer class ids"),
        (["a"], [0], ["a", "b"], "integer class ids"),
    ],
)
def test_bad_input_raises_one_line_charlm_error(truth, predicted, labels, words):
    with pytest.raises(CharlmError, match=words) as caught:
        class_report(truth, predicted, labels)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_scikit_learn_on_random_data(seed):
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed (pip install scikit-learn)")
    rng = np.random.default_rng(seed)
    C = int(rng.integers(2, 9))
    n = int(rng.integers(1, 200))
    truth = rng.integers(0, C, n)
    # mostly right, some classes rarely or never predicted
    predicted = np.where(rng.random(n) < 0.6, truth, rng.integers(0, max(1, C - 2), n))
    report = class_report(truth.tolist(), predicted.tolist(), [f"c{i}" for i in range(C)])
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        truth, predicted, labels=list(range(C)), zero_division=0
    )
    assert [row["precision"] for row in report.per_class] == pytest.approx(precision.tolist())
    assert [row["recall"] for row in report.per_class] == pytest.approx(recall.tolist())
    assert [row["f1"] for row in report.per_class] == pytest.approx(f1.tolist())
    assert [row["support"] for row in report.per_class] == support.tolist()
    assert report.macro_f1 == pytest.approx(metrics.f1_score(truth, predicted, average="macro", zero_division=0))
    assert report.accuracy == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert report.confusion == metrics.confusion_matrix(truth, predicted, labels=list(range(C))).tolist()
