"""Classifier: label texts with a trained classifier run, as `charlm classify predict` and `evaluate` do.

    classifier = Classifier("runs/sentiment")           # open_run(..., task="classify")
    classifier.predict(["a fine film", "dull"], top=2)  # [Prediction(label, probability, top, ...)]
    classifier.probabilities(texts)                     # (N, C) array, columns in classifier.labels' order
    classifier.evaluate("test.tsv").report.accuracy     # Evaluation: ClassReport, unknown labels, loss

Texts are cut to the run's max_length tokens, keeping the end it was trained with, exactly
as training cut them (classifying.encode_texts); they are classified in batches of similar
length and come back in input order, so batching never changes a result. An evaluation
counts the examples whose label the run does not know, per label, and leaves them out of
its figures; with explain (attention pooling) every prediction carries each token's text
and attention weight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from charlm.errors import CharlmError, OptionError, check
from charlm.hardware import resolve_device, set_threads
from charlm.inference.classification_metrics import ClassReport, class_report
from charlm.inference.classifying import EncodedTexts, Predictions, encode_texts, predict
from charlm.runs.open import open_run
from charlm.text.labelled import LabelledTexts, read_labelled
from charlm.text.tokenizer import StreamDecoder

Pairs = list[tuple[str, float]]
LISTED = 8  # labels named in a message before "and N more"


@dataclass
class Prediction:
    """One text's label, with the top labels and every class's probability."""

    text: str
    label: str
    probability: float
    top: Pairs  # the top-k labels with their probabilities, best first
    probabilities: dict[str, float]  # every class, in the run's label order
    attention: Optional[Pairs] = None  # with explain: each token read (its text) and its weight

    def to_dict(self) -> dict:
        """JSON-ready: top as objects, attention (when there is one) as [token, weight] pairs."""
        out = {
            "text": self.text,
            "label": self.label,
            "probability": self.probability,
            "top": [{"label": label, "probability": p} for label, p in self.top],
            "probabilities": dict(self.probabilities),
        }
        if self.attention is not None:
            out["attention"] = [[token, weight] for token, weight in self.attention]
        return out


@dataclass
class Evaluation:
    """How a run did on labelled texts; the figures count the examples with known labels only."""

    report: ClassReport
    unknown: dict[str, int]  # labels the run does not know -> how many examples had them (left out)
    loss: float  # mean cross entropy (nats) over the examples counted
    checkpoint: str
    source: str  # what was read, for messages
    seconds: float  # encoding and classifying the examples counted
    notes: list[str] = field(default_factory=list)  # what reading the data said

    @property
    def examples(self) -> int:
        return self.report.examples

    @property
    def left_out(self) -> int:
        return sum(self.unknown.values())

    @property
    def texts_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            **self.report.to_dict(),
            "unknown_labels": dict(self.unknown),
            "left_out": self.left_out,
            "loss": float(self.loss),
            "checkpoint": self.checkpoint,
            "data": self.source,
            "seconds": round(self.seconds, 3),
            "texts_per_s": round(self.texts_per_s, 1),
        }


def listed(labels: Sequence[str], most: int = LISTED) -> str:
    """Labels for a message: the first few, quoted, then how many more."""
    shown = ", ".join(repr(label) for label in labels[:most])
    return shown + (f" and {len(labels) - most:,} more" if len(labels) > most else "")


class Classifier:
    """A classifier run opened for use (see the module docstring)."""

    def __init__(
        self,
        source: Union[str, Path],
        checkpoint: str = "auto",
        device: Union[str, torch.device] = "auto",
        threads: Optional[int] = None,
        batch_size: int = 128,
        precision: str = "fp32",
    ):
        """source: a run directory made by charlm classify train. checkpoint: best, last or
        auto (best, else last). device: auto, cpu, cuda or a torch.device. threads: torch's
        CPU threads (None leaves them as they are). batch_size: texts per forward pass."""
        check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", f"must be at least 1 (got {batch_size})")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if threads is not None:
            set_threads(threads)
        opened = open_run(source, checkpoint, self.device, task="classify")
        self.path, self.config, self.tokenizer = opened.path, opened.config, opened.tokenizer
        self.model, self.checkpoint = opened.model, opened.checkpoint
        self.labels: list[str] = list(self.config.model.labels)
        self.batch_size, self.precision = batch_size, precision
        classify = self.config.classify
        self.max_length = classify.max_length if classify is not None else None
        self.keep = classify.keep if classify is not None else "head"

    @property
    def pooling(self) -> str:
        return self.config.model.pooling

    # ----- texts in, probabilities out ------------------------------------------------------
    def encode(self, texts: Sequence[str], labels: Optional[Sequence[str]] = None) -> EncodedTexts:
        """The texts as the model reads them (cut as in training); labels the run does not know get -1."""
        if isinstance(texts, str):
            raise CharlmError("give a list of texts, not one string (wrap a single text in a list: [text])")
        for number, text in enumerate(texts, start=1):
            if not isinstance(text, str):
                raise CharlmError(f"text {number} is a {type(text).__name__}, not a string; give every text as a str")
        return encode_texts(texts, self.tokenizer, labels, self.labels, self.max_length, self.keep)

    def _classify(self, encoded: EncodedTexts, explain: bool = False) -> Predictions:
        return predict(self.model, encoded, self.batch_size, self.device, self.precision, explain=explain)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(N, C) float32: every text's probability of every class (columns: self.labels)."""
        return self._classify(self.encode(texts)).probabilities

    def check_request(self, top: int = 1, explain: bool = False) -> None:
        """Refuse a top-k or an explanation this run cannot give, before any text is read."""
        C = len(self.labels)
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= C:
            raise OptionError("top", f"must be from 1 to {C}, the number of classes the run knows (got {top})")
        if explain and self.pooling != "attention":
            raise OptionError(
                "explain",
                f"needs a run trained with --pooling attention; {self.path} pools with {self.pooling}, "
                "which gives no weight per token",
            )

    def predict(self, texts: Sequence[str], top: int = 1, explain: bool = False) -> list[Prediction]:
        """Each text's most likely label, its `top` best labels and every class's
        probability, in input order; explain (attention pooling only) adds each token's weight."""
        self.check_request(top, explain)
        encoded = self.encode(texts)
        result = self._classify(encoded, explain)
        predictions = []
        for i, text in enumerate(texts):
            row = result.probabilities[i]
            best = np.argsort(-row, kind="stable")[:top]  # ties: the run's label order
            attention = None
            if explain:
                weights = result.attention[i]
                attention = list(zip(self._pieces(text, encoded.example(i)), (float(w) for w in weights)))
            predictions.append(
                Prediction(
                    text=text,
                    label=self.labels[int(best[0])],
                    probability=float(row[best[0]]),
                    top=[(self.labels[int(c)], float(row[c])) for c in best],
                    probabilities={label: float(p) for label, p in zip(self.labels, row)},
                    attention=attention,
                )
            )
        return predictions

    def _pieces(self, text: str, ids: np.ndarray) -> list[str]:
        """The text of each token the model read. A char tokenizer reads one token per
        character, so the characters themselves are shown (unknown ones too); otherwise each
        token shows the text it completes (a character spanning several tokens shows at its
        last one, the others as "")."""
        if self.tokenizer.kind == "char":
            chars = text if self.max_length is None or len(text) <= self.max_length else (
                text[: self.max_length] if self.keep == "head" else text[-self.max_length :]
            )  # fmt: skip
            if len(chars) == len(ids):
                return list(chars)
        decoder = StreamDecoder(self.tokenizer)
        pieces = [decoder.push(int(token)) for token in ids]
        if pieces:
            pieces[-1] += decoder.flush()
        return pieces

    # ----- labelled texts in, figures out ---------------------------------------------------
    def evaluate(
        self,
        data: Union[LabelledTexts, str, Path, Sequence[Union[str, Path]]],
        text_field: Optional[str] = None,
        label_field: Optional[str] = None,
        encoding_errors: str = "strict",
    ) -> Evaluation:
        """Accuracy, macro-F1, per-class figures, the confusion matrix and the mean loss of
        the run on labelled texts (LabelledTexts, or anything read_labelled reads). Examples
        whose label the run does not know are counted per label and left out."""
        if not isinstance(data, LabelledTexts):
            data = read_labelled(data, text_field, label_field, encoding_errors, min_classes=1)
        known = set(self.labels)
        unknown: dict[str, int] = {}
        keep = []
        for i, label in enumerate(data.labels):
            if label in known:
                keep.append(i)
            else:
                unknown[label] = unknown.get(label, 0) + 1
        if not keep:
            raise CharlmError(
                f"none of the {len(data.labels):,} examples of {data.source} has a label the run knows (the data "
                f"has {listed(sorted(unknown))}; the run knows {listed(self.labels)}); check --label-field, or "
                "evaluate a run trained on these labels"
            )
        started = time.perf_counter()
        texts = [data.texts[i] for i in keep]
        encoded = self.encode(texts, [data.labels[i] for i in keep])
        result = self._classify(encoded)
        seconds = time.perf_counter() - started
        predicted = result.probabilities.argmax(axis=1)
        report = class_report(encoded.labels, predicted, self.labels)
        ordered = dict(sorted(unknown.items(), key=lambda item: (-item[1], item[0])))
        return Evaluation(report, ordered, float(result.loss), self.checkpoint, data.source, seconds,
                          list(data.notes))  # fmt: skip
