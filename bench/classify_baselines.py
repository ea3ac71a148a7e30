"""The two baselines bench/classify.py measures beside charlm, and the split files all systems read.

  write_tsv / read_tsv   a split as `text<TAB>label` with a header, through the csv module, so a
                         text with tabs, newlines or quotes comes back as it went in
  words / WordVocab      the textbook's word tokenizer (Keras Tokenizer's rule: lower-case, every
                         punctuation mark but the apostrophe is a separator) and its vocabulary of
                         the 10,000 most frequent training words, plus padding (0) and unknown (1)
  run_textbook           the seed textbook's model: word Embedding(32) -> one tanh RNN(32), its
                         last state -> Linear to the classes with softmax (for two classes too: the
                         same model as one sigmoid unit), Adam 1e-3, batches of 32, epochs until
                         the budget, the best epoch on validation accuracy kept (patience 3); one thread
  run_tfidf              TF-IDF over character 1-5-grams + logistic regression (saga), the
                         analyzer (char, char_wb) and C chosen on validation accuracy; needs scikit-learn,
                         a benchmark-only dependency (pip install scikit-learn): None when absent
Each run returns predicted label ids on the test split and its timings; the caller scores them.
"""

from __future__ import annotations

import csv
import io
import re
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

TSV_HEADER = ["text", "label"]
# Keras Tokenizer's default filters, all of string.punctuation but the apostrophe, plus tab and newline
_SEPARATORS = re.compile(r"[\s!\"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~]+")
VOCAB_WORDS = 10_000
PAD, UNKNOWN = 0, 1
MAX_WORDS = 500  # the textbook's maxlen; longer texts keep their last 500 words (Keras truncates the front)
TFIDF_GRID = {"analyzer": ("char_wb", "char"), "C": (1.0, 3.0, 10.0, 30.0, 100.0)}


def write_tsv(path: Path, texts: list[str], labels: list[str]) -> None:
    """One split as TSV with a header row; csv quoting keeps tabs, newlines and quotes inside texts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_HEADER)
    writer.writerows(zip(texts, labels))
    path.write_text(buffer.getvalue(), encoding="utf-8")


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    """write_tsv's file back as (texts, labels)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0] != TSV_HEADER:
        raise ValueError(f"{path} does not start with the header {TSV_HEADER}")
    return [row[0] for row in rows[1:]], [row[1] for row in rows[1:]]


def words(text: str) -> list[str]:
    """The textbook tokenizer: lower-case, split at whitespace and punctuation (the apostrophe stays)."""
    return [w for w in _SEPARATORS.split(text.lower()) if w]


class WordVocab:
    """The `limit` most frequent training words (ties: the first seen first); 0 pads, 1 is unknown."""

    def __init__(self, texts: list[str], limit: int = VOCAB_WORDS):
        counts = Counter(w for text in texts for w in words(text))
        self.index = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(limit))}
        self.size = len(self.index) + 2

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(w, UNKNOWN) for w in words(text)][-MAX_WORDS:]
        return ids or [UNKNOWN]  # a text without a word (":-)") reads as one unknown word


class TextbookRNN(nn.Module):
    """Embedding(32) -> SimpleRNN(32) (tanh, one layer) -> Linear to the classes (softmax in the loss)."""

    def __init__(self, vocab: int, classes: int, width: int = 32):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width, padding_idx=PAD)
        self.rnn = nn.RNN(width, width, num_layers=1, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # ids (B, T) padded at the end, lengths (B,): packing gives each text's own last state
        packed = pack_padded_sequence(self.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        _, last = self.rnn(packed)  # (1, B, H)
        return self.head(last[0])  # (B, C)


def _batch(encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(ids) for ids in encoded])
    return pad_sequence([torch.tensor(ids) for ids in encoded], batch_first=True, padding_value=PAD), lengths


@torch.no_grad()
def _predict(model: TextbookRNN, encoded: list[list[int]], batch: int = 256) -> list[int]:
    model.eval()
    out = []
    for start in range(0, len(encoded), batch):
        out += model(*_batch(encoded[start : start + batch])).argmax(-1).tolist()
    return out


def _accuracy(predicted: list[int], truth: list[int]) -> float:
    return sum(p == t for p, t in zip(predicted, truth)) / max(1, len(truth))


def run_textbook(splits, label_ids: dict, budget: float, seed: int, max_epochs: int = 30, patience: int = 3) -> dict:
    """Train the textbook RNN on splits.train for at most `budget` seconds or `max_epochs`; predict splits.test.

    On one thread: a model this small gains nothing from more, and on a busy machine two
    threads ran it 20x slower (275 against 5,290 texts/s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _textbook(splits, label_ids, budget, seed, max_epochs, patience)
    finally:
        torch.set_num_threads(threads)


def _textbook(splits, label_ids: dict, budget: float, seed: int, max_epochs: int, patience: int) -> dict:
    torch.manual_seed(seed)
    started = time.perf_counter()
    vocab = WordVocab(splits.train.texts)
    train = [vocab.encode(t) for t in splits.train.texts]
    val = [vocab.encode(t) for t in splits.val.texts]
    y_train = torch.tensor([label_ids[label] for label in splits.train.labels])
    y_val = [label_ids[label] for label in splits.val.labels]
    model = TextbookRNN(vocab.size, len(label_ids))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    best, best_epoch, epochs, seen, history = -1.0, 0, 0, 0, []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    while epochs < max_epochs and epochs - best_epoch < patience and time.perf_counter() - started < budget:
        model.train()
        for batch in torch.randperm(len(train), generator=order).split(32):
            ids, lengths = _batch([train[i] for i in batch.tolist()])
            loss = nn.functional.cross_entropy(model(ids, lengths), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(batch)
            if time.perf_counter() - started >= budget:
                break
        epochs += 1
        accuracy = _accuracy(_predict(model, val), y_val)
        history.append(round(accuracy, 4))
        if accuracy > best:
            best, best_epoch = accuracy, epochs
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    train_s = time.perf_counter() - started
    model.load_state_dict(best_state)
    predicting = time.perf_counter()
    predicted = _predict(model, [vocab.encode(t) for t in splits.test.texts])
    predict_s = time.perf_counter() - predicting
    return {
        "predicted": predicted,
        "train_s": train_s,
        "train_texts_per_s": seen / train_s,
        "predict_s": predict_s,
        "predict_texts_per_s": len(predicted) / predict_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_words": vocab.size - 2,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "val_accuracy_by_epoch": history,
        "val_accuracy": best,
        "texts_seen": seen,
        "threads": 1,
    }


def sklearn_missing() -> str | None:
    """Why the TF-IDF row cannot run, or None when scikit-learn is importable."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "scikit-learn is not installed (a benchmark-only dependency: pip install scikit-learn)"
    return None


def _tfidf_fit(texts: list[str], y: list[int], analyzer: str, C: float, seed: int, model=None):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=(1, 5), sublinear_tf=True, min_df=2)
    x = vectorizer.fit_transform(texts)
    model = model or LogisticRegression(solver="saga", max_iter=1000, random_state=seed)
    model.set_params(C=C)
    return vectorizer, model.fit(x, y), x.shape[1]


def run_tfidf(splits, label_ids: dict, seed: int) -> dict:
    """TF-IDF character 1-5-grams + logistic regression; analyzer and C by validation accuracy.

    saga, each analyzer's C values in increasing order from the last one's weights (warm start:
    about 5x quicker than cold lbfgs fits, the same accuracy on names and TREC), then the chosen
    setting fitted once more from scratch: that fit gives the training throughput and predicts."""
    from sklearn.linear_model import LogisticRegression

    y_train = [label_ids[label] for label in splits.train.labels]
    y_val = [label_ids[label] for label in splits.val.labels]
    started = time.perf_counter()
    trials = []
    for analyzer in TFIDF_GRID["analyzer"]:
        model = LogisticRegression(solver="saga", max_iter=1000, random_state=seed, warm_start=True)
        for C in TFIDF_GRID["C"]:
            fitting = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                vectorizer, model, _ = _tfidf_fit(splits.train.texts, y_train, analyzer, C, seed, model)
            accuracy = _accuracy(model.predict(vectorizer.transform(splits.val.texts)).tolist(), y_val)
            converged = not any("converge" in str(w.message) for w in caught)  # saga stopped at max_iter
            trials.append({"analyzer": analyzer, "C": C, "val_accuracy": round(accuracy, 4), "converged": converged,
                           "fit_s": round(time.perf_counter() - fitting, 2)})  # fmt: skip
    best = max(trials, key=lambda trial: trial["val_accuracy"])  # the first of equals: the simpler analyzer, lower C
    fitting = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the grid's row of this setting says whether it converged
        vectorizer, model, features = _tfidf_fit(splits.train.texts, y_train, best["analyzer"], best["C"], seed)
    fit_s = time.perf_counter() - fitting
    train_s = time.perf_counter() - started
    predicting = time.perf_counter()
    predicted = model.predict(vectorizer.transform(splits.test.texts)).tolist()
    predict_s = time.perf_counter() - predicting
    return {
        "predicted": predicted,
        "train_s": train_s,  # the grid search and the final fit
        "train_texts_per_s": len(y_train) / fit_s,  # the final fit: vectorize + regression
        "final_fit_s": fit_s,
        "predict_s": predict_s,
        "predict_texts_per_s": len(predicted) / predict_s,
        "analyzer": best["analyzer"],
        "C": best["C"],
        "features": features,
        "val_accuracy": best["val_accuracy"],
        "grid": trials,
    }
