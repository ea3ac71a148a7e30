"""charlm classify train under real torchrun: two CPU processes, gloo, DistributedDataParallel.

The same classifier run (no dropout, a training set that fills whole batches, so one process
and two see the same batches) in one process and in two: the two processes share each batch
of texts, DDP averages their gradients, and the run follows the one-process loss curve up
to float rounding, with the replicas' weights identical, only rank 0 writing, and every
validation (each process classifies the whole split) the same.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_weights, child_env

# two half-batch gradients averaged against one whole-batch mean: equal up to rounding
LOSS_TOLERANCE = 1e-4
OPTIONS = [
    "--hidden", "16", "--embed", "8", "--batch-size", "8", "--threads", "1", "--precision", "fp32",
    "--max-steps", "24", "--log-every", "2", "--eval-every", "12", "--dropout", "0", "--seed", "3",
]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="this torch build has no torch.distributed with gloo",
    ),
]


def _write(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["text\tlabel"]
    for i in range(count):
        label = "ab"[i % 2]
        body = "".join(rng.choice(label + "xy") for _ in range(rng.randint(3, 30)))
        rows.append(f"{body}{i}\t{label}")  # the number keeps every text distinct
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def _events(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == kind]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify-distributed")
    train, val = _write(root / "train.tsv", 96, 1), _write(root / "val.tsv", 20, 2)  # 96: twelve whole batches
    env = child_env(root / "data")
    common = ["classify", "train", "--data", str(train), "--val-data", str(val), *OPTIONS]
    one = _run([sys.executable, "-m", "charlm", *common, "--out", str(root / "one")], env, root)
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "charlm",
                *common, "--out", str(root / "two")], env, root)  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    return root / "one", root / "two", two


def test_two_processes_follow_one_and_validate_alike(one_and_two):
    one, two, _ = one_and_two
    losses_one = [e["loss"] for e in _events(one, "train")]
    losses_two = [e["loss"] for e in _events(two, "train")]
    assert len(losses_one) == len(losses_two) == 12
    assert max(abs(a - b) for a, b in zip(losses_one, losses_two)) < LOSS_TOLERANCE
    evals_one, evals_two = _events(one, "eval"), _events(two, "eval")
    assert [e["step"] for e in evals_one] == [e["step"] for e in evals_two] == [12, 24]
    for a, b in zip(evals_one, evals_two):
        assert a["accuracy"] == b["accuracy"]
        assert abs(a["loss"] - b["loss"]) < LOSS_TOLERANCE
    assert _events(two, "start")[0]["processes"] == 2


def test_the_saved_weights_match_one_process(one_and_two):
    one, two, _ = one_and_two
    a, b = checkpoint_weights(one), checkpoint_weights(two)
    assert a.keys() == b.keys()
    assert max(float((a[name] - b[name]).abs().max()) for name in a) < 1e-3


def test_only_rank_zero_talks(one_and_two):
    _, _, two = one_and_two
    assert two.stderr.count("run directory:") == 1
    assert "Traceback" not in two.stderr
