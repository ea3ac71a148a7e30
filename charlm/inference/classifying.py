"""Classifying encoded texts in batches: the inputs a SequenceClassifier reads, and its predictions.

`EncodedTexts` holds texts encoded by a run's tokenizer in one flat int32 array with offsets
(cut to max_length tokens, keeping the head or the tail), and the label of each as a class
index. `pad` turns some of them into the (B, T) ids and (B,) lengths the model reads.
`predict` runs a model over all of them in batches of similar length (longest first, so
padding costs little and the first batch shows at once whether memory suffices) and gives
every text's class probabilities, and its attention weights on request, in input order.
Training (charlm.tasks.classification), `Classifier` and `charlm classify` all read texts so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from charlm.errors import CharlmError
from charlm.hardware import autocast
from charlm.text.tokenizer import Tokenizer


@dataclass
class EncodedTexts:
    ids: np.ndarray  # every text's tokens, one after another (int32)
    offsets: np.ndarray  # (N + 1,) where each text starts, int64
    labels: np.ndarray  # (N,) class index of each text, int64 (-1: a label the run does not know)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def fingerprint(self) -> str:
        """A hash of the ids and labels, to tell on resume whether the data changed."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.ids, self.offsets, self.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def encode_texts(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    labels: Optional[Sequence[str]] = None,
    classes: Sequence[str] = (),
    max_length: Optional[int] = None,
    keep: str = "head",
) -> EncodedTexts:
    """Encode texts (and their labels, as indices into classes) for a classifier."""
    index = {label: i for i, label in enumerate(classes)}
    pieces, offsets = [], [0]
    for number, text in enumerate(texts):
        ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
        if max_length is not None and len(ids) > max_length:
            ids = ids[:max_length] if keep == "head" else ids[-max_length:]
        if len(ids) == 0:
            raise CharlmError(f"text {number + 1} is empty; every text needs at least one character")
        pieces.append(ids)
        offsets.append(offsets[-1] + len(ids))
    label_ids = np.array([index.get(label, -1) for label in labels] if labels is not None else [-1] * len(texts))
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return EncodedTexts(ids, np.asarray(offsets, dtype=np.int64), label_ids.astype(np.int64))


def pad(texts: EncodedTexts, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples `rows` as (B, T) int64 ids padded with 0 and their (B,) lengths."""
    lengths = texts.lengths[np.asarray(rows, dtype=np.int64)]
    x = np.zeros((len(rows), int(lengths.max()) if len(rows) else 0), dtype=np.int64)
    for i, row in enumerate(rows):
        x[i, : lengths[i]] = texts.example(row)
    return torch.from_numpy(x), torch.from_numpy(lengths.astype(np.int64))


def length_order(texts: EncodedTexts) -> np.ndarray:
    """The examples longest first (stable): batches of similar length for inference."""
    return np.argsort(-texts.lengths, kind="stable")


@dataclass
class Predictions:
    probabilities: np.ndarray  # (N, C) float32, in input order
    loss: Optional[float] = None  # mean cross entropy over the labelled texts (labels known to the run)
    attention: Optional[list[np.ndarray]] = None  # each text's (T_i,) weights, with explain


def predict(
    model: torch.nn.Module,
    texts: EncodedTexts,
    batch_size: int = 128,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
    explain: bool = False,
    max_batch_tokens: int = 1 << 18,
) -> Predictions:
    """Every text's class probabilities under `model` (put in eval mode for the call).

    Batches hold at most batch_size texts and about max_batch_tokens padded tokens, so a
    few long documents do not make one huge batch."""
    was_training = model.training
    model.eval()
    N = len(texts)
    classes = model.config.classes
    probabilities = np.zeros((N, classes), dtype=np.float32)
    attention: Optional[list] = [None] * N if explain else None
    order, lengths = length_order(texts), texts.lengths
    nll, counted = 0.0, 0
    try:
        with torch.no_grad():
            start = 0
            while start < N:
                rows_here = max(1, min(batch_size, max_batch_tokens // max(int(lengths[order[start]]), 1)))
                rows = order[start : start + rows_here]
                start += len(rows)
                x, lens = pad(texts, rows)
                with autocast(device, precision):
                    out = model(x.to(device), lens, explain=explain)
                logits, weights = out if isinstance(out, tuple) else (out, None)
                logp = torch.log_softmax(logits.float(), dim=1)
                probabilities[rows] = logp.exp().cpu().numpy()
                labels = torch.from_numpy(texts.labels[rows]).to(device)
                known = labels >= 0
                if bool(known.any()):
                    nll += float(-logp[known].gather(1, labels[known].unsqueeze(1)).sum())
                    counted += int(known.sum())
                if weights is not None:
                    for i, row in enumerate(rows):
                        attention[row] = weights[i, : lens[i]].float().cpu().numpy()
    finally:
        model.train(was_training)
    return Predictions(probabilities, nll / counted if counted else None, attention if explain else None)
