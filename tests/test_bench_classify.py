"""bench/classify_baselines.py, the parts of the classification benchmark that need no charlm run.

The split files every system reads must give back exactly the texts written (tabs, newlines,
quotes); the textbook tokenizer follows Keras's rule; the textbook RNN reads a padded batch as
it reads each text alone, and both baselines learn a task a child could.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
from helpers import REPO

spec = importlib.util.spec_from_file_location("classify_baselines", REPO / "bench" / "classify_baselines.py")
baselines = importlib.util.module_from_spec(spec)
spec.loader.exec_module(baselines)

AWKWARD = [
    "plain words",
    "a\ttab inside",
    "a newline\ninside, and\r\na CRLF",
    "quotes \"here\" and 'there'",
    '"starts with a quote',
    "  leading and trailing spaces  ",
    "ünïcödé — and emoji 🙂",
    "x",
]


def test_split_files_give_back_every_text_as_written(tmp_path):
    labels = [f"label {i % 3}" for i in range(len(AWKWARD))]
    path = tmp_path / "train.tsv"
    baselines.write_tsv(path, AWKWARD, labels)
    assert path.read_text(encoding="utf-8").startswith("text\tlabel\n")
    assert baselines.read_tsv(path) == (AWKWARD, labels)


def test_charlm_reads_the_split_files_as_written(tmp_path):
    labelled = pytest.importorskip("charlm.text.labelled", reason="charlm.text.labelled is not there yet")
    labels = ["neg", "pos"] * (len(AWKWARD) // 2)
    path = tmp_path / "train.tsv"
    baselines.write_tsv(path, AWKWARD, labels)
    data = labelled.read_labelled(str(path))
    assert (data.texts, data.labels) == (AWKWARD, labels)


def test_the_textbook_tokenizer_lowercases_and_splits_at_punctuation():
    assert baselines.words("Don't STOP, now!!  (Really?)") == ["don't", "stop", "now", "really"]
    assert baselines.words("Müller-Lüdenscheidt") == ["müller", "lüdenscheidt"]
    assert baselines.words("...") == []


def test_the_vocabulary_keeps_the_most_frequent_words_and_maps_the_rest_to_unknown():
    vocab = baselines.WordVocab(["b a a", "c b a", "d"], limit=2)
    assert vocab.size == 4  # padding, unknown, a, b
    assert vocab.encode("a b c") == [2, 3, baselines.UNKNOWN]
    assert vocab.encode("!!") == [baselines.UNKNOWN]  # no word: one unknown, never an empty sequence
    long = " ".join(["a"] * 600 + ["b"])
    assert len(vocab.encode(long)) == baselines.MAX_WORDS and vocab.encode(long)[-1] == 3  # the tail is kept


def test_the_textbook_rnn_reads_a_padded_batch_as_each_text_alone():
    torch.manual_seed(0)
    model = baselines.TextbookRNN(vocab=20, classes=3).eval()
    texts = [[5, 6, 7, 8, 9], [3], [4, 4, 2]]
    batched = model(*baselines._batch(texts))
    alone = torch.cat([model(*baselines._batch([t])) for t in texts])
    assert torch.allclose(batched, alone, atol=1e-6)


def toy_splits():
    """Two classes told apart by one word, in noise; SimpleNamespace-like splits."""
    from types import SimpleNamespace

    rng = random.Random(0)
    filler = ["the", "film", "was", "a", "very", "long", "one", "and", "it", "ended"]

    def part(n):
        labels = [rng.choice(["neg", "pos"]) for _ in range(n)]
        texts = [" ".join(rng.sample(filler, 5) + [("dreadful" if y == "neg" else "lovely")]) for y in labels]
        return SimpleNamespace(texts=texts, labels=labels)

    return SimpleNamespace(train=part(200), val=part(40), test=part(40), labels=["neg", "pos"])


def test_the_textbook_model_learns_a_word_that_decides_the_class():
    torch.set_num_threads(1)
    splits = toy_splits()
    ids = {"neg": 0, "pos": 1}
    result = baselines.run_textbook(splits, ids, budget=20, seed=0, max_epochs=15)
    truth = [ids[y] for y in splits.test.labels]
    accuracy = sum(p == t for p, t in zip(result["predicted"], truth)) / len(truth)
    assert accuracy >= 0.9, result["val_accuracy_by_epoch"]
    assert result["epochs"] == len(result["val_accuracy_by_epoch"]) and result["best_epoch"] <= result["epochs"]
    assert result["texts_seen"] == 200 * result["epochs"] and result["train_texts_per_s"] > 0


def test_tfidf_chooses_its_setting_on_validation_and_learns_the_same_task():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install scikit-learn)")
    splits = toy_splits()
    ids = {"neg": 0, "pos": 1}
    result = baselines.run_tfidf(splits, ids, seed=0)
    truth = [ids[y] for y in splits.test.labels]
    assert sum(p == t for p, t in zip(result["predicted"], truth)) / len(truth) >= 0.9
    grid = baselines.TFIDF_GRID
    assert len(result["grid"]) == len(grid["analyzer"]) * len(grid["C"])
    assert result["val_accuracy"] == max(trial["val_accuracy"] for trial in result["grid"])
