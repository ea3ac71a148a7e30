"""How well a classifier's predictions match the true labels: accuracy, per-class figures, macro-F1.

class_report(true_ids, predicted_ids, labels) counts a confusion matrix (rows: the true label,
columns: the predicted one, both in `labels`' order) and derives from it, for every label,
precision, recall, F1 and support, then accuracy and macro-F1. numpy only: the benchmark and
`charlm classify evaluate` both call it, and its figures agree with scikit-learn's
(`precision_recall_fscore_support(..., zero_division=0)` and `f1_score(average="macro")`),
which tests/test_classification_metrics.py checks where scikit-learn is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from charlm.errors import CharlmError


@dataclass
class ClassReport:
    """The figures of one evaluation; `per_class` and `confusion` follow `labels`' order."""

    labels: list[str]
    examples: int
    accuracy: float
    macro_f1: float
    per_class: list[dict]  # {"label", "precision", "recall", "f1", "support"} per label
    confusion: list[list[int]]  # (C, C): rows the true label, columns the predicted one

    def to_dict(self) -> dict:
        """JSON-ready: plain str, int and float only."""
        return {
            "labels": [str(label) for label in self.labels],
            "examples": int(self.examples),
            "accuracy": float(self.accuracy),
            "macro_f1": float(self.macro_f1),
            "per_class": [
                {
                    "label": str(row["label"]),
                    "precision": float(row["precision"]),
                    "recall": float(row["recall"]),
                    "f1": float(row["f1"]),
                    "support": int(row["support"]),
                }
                for row in self.per_class
            ],
            "confusion": [[int(n) for n in row] for row in self.confusion],
        }


def _ids(values: Sequence[int], name: str, classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise CharlmError(f"{name} must be a flat sequence of class ids (got shape {array.shape})")
    if array.size == 0:
        return array.astype(np.int64)  # np.asarray([]) is float: an empty input is reported as empty
    if array.dtype.kind not in "iub":
        raise CharlmError(f"{name} must hold integer class ids (got {array.dtype}); map labels to ids first")
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= classes:
        bad = int(array[(array < 0) | (array >= classes)][0])
        raise CharlmError(f"{name} holds class id {bad}, outside 0..{classes - 1} for {classes} labels")
    return array


def class_report(true_ids: Sequence[int], predicted_ids: Sequence[int], labels: list[str]) -> ClassReport:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Conventions:
      * precision of a class never predicted is 0, recall of a class with no support is 0, and
        F1 is 2 TP / (2 TP + FP + FN), 0 when that is 0/0 (scikit-learn's zero_division=0);
      * macro-F1 is the unweighted mean of per-class F1 over the classes that occur in the true
        labels OR in the predictions; a label in `labels` that is neither (a rare class absent
        from this split, never predicted) has no defined F1, and counting it as 0 would charge
        the classifier for the split rather than its predictions. That is scikit-learn's default
        (labels=None averages over every label present in true or predicted). Such a label
        still gets its row in `per_class` (all zeros) and in `confusion`;
      * an empty input, sequences of different lengths, or an id outside the labels raise
        CharlmError.
    """
    labels = list(labels)
    if not labels:
        raise CharlmError("class_report needs at least one label")
    C = len(labels)
    truth = _ids(true_ids, "true_ids", C)
    predicted = _ids(predicted_ids, "predicted_ids", C)
    if truth.size == 0:
        raise CharlmError("class_report needs at least one example (got none); evaluate on a non-empty data set")
    if truth.size != predicted.size:
        raise CharlmError(f"true_ids has {truth.size} examples but predicted_ids has {predicted.size}; pass one each")
    confusion = np.zeros((C, C), dtype=np.int64)  # (C, C)
    np.add.at(confusion, (truth, predicted), 1)
    tp = np.diag(confusion).astype(np.float64)  # (C,)
    support = confusion.sum(axis=1)  # (C,) how often each label is the true one
    predicted_count = confusion.sum(axis=0)  # (C,) how often each label was predicted
    fp, fn = predicted_count - tp, support - tp
    precision = np.divide(tp, predicted_count, out=np.zeros(C), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros(C), where=support > 0)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(C), where=denominator > 0)
    present = (support > 0) | (predicted_count > 0)  # never empty: there is at least one example
    per_class = [
        {
            "label": str(label),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, label in enumerate(labels)
    ]
    return ClassReport(
        labels=[str(label) for label in labels],
        examples=int(truth.size),
        accuracy=float(tp.sum() / truth.size),
        macro_f1=float(f1[present].mean()),
        per_class=per_class,
        confusion=confusion.tolist(),
    )
