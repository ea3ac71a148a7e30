"""Every cell, direction and pooling trains, evaluates and predicts, from the CLI and from Python.

One tiny labelled TSV; for each combination `charlm classify train` (in this process) runs a
few steps with that --cell, --bidirectional/--unidirectional and --pooling; the run's
config.json records them; `charlm classify evaluate --json` and `charlm classify predict
--json` answer on it; and `Classifier(run)` predicts the same labels and probabilities as
the command line, in input order, with attention weights only for attention pooling.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import invoke, read_config

from charlm import Classifier

CELLS = ("lstm", "gru", "rnn-tanh", "rnn-relu")
POOLINGS = ("last", "mean", "max", "attention", "concat")
QUICK = ["--hidden", "8", "--embed", "4", "--threads", "1", "--batch-size", "8", "--device", "cpu",
         "--precision", "fp32", "--max-steps", "3", "--eval-every", "3"]  # fmt: skip
TEXTS = ["axa xx", "byyb", "a", "b y b y b y b y b y b y"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = random.Random(5)
    rows = ["text\tlabel"]
    for i in range(48):
        label = "ab"[i % 2]
        body = "".join(rng.choice(label + " xy"[: 1 + i % 3]) for _ in range(rng.randint(2, 20)))
        rows.append(f"{label}{body}{label}\t{label}")
    path = tmp_path_factory.mktemp("matrix") / "texts.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("direction", ["--bidirectional", "--unidirectional"])
@pytest.mark.parametrize("cell", CELLS)
def test_trains_evaluates_and_predicts(tmp_path, data, cell, direction, pooling):
    run = tmp_path / "run"
    done = invoke("classify", "train", "--data", str(data), "--out", str(run), "--cell", cell, direction,
                  "--pooling", pooling, *QUICK)  # fmt: skip
    assert done.exit_code == 0, done.stderr
    model = read_config(run)["model"]
    assert (model["cell"], model["bidirectional"], model["pooling"]) == (cell, direction == "--bidirectional", pooling)

    evaluated = invoke("classify", "evaluate", str(run), "--data", str(data), "--json", "--threads", "1")
    assert evaluated.exit_code == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["examples"] > 0 and 0.0 <= report["accuracy"] <= 1.0

    predicted = invoke("classify", "predict", str(run), *TEXTS, "--json", "--threads", "1")
    assert predicted.exit_code == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [line["text"] for line in lines] == TEXTS

    classifier = Classifier(run, device="cpu")
    found = classifier.predict(TEXTS, explain=pooling == "attention")
    for line, prediction in zip(lines, found):
        assert prediction.label == line["label"] and prediction.label in ("a", "b")
        assert prediction.probability == pytest.approx(line["probability"], abs=1e-6)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        if pooling == "attention":
            assert sum(weight for _, weight in prediction.attention) == pytest.approx(1.0, abs=1e-5)
        else:
            assert prediction.attention is None
