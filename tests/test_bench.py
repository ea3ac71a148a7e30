"""The benchmark scripts run from a checkout with one command and write the JSON they promise.

Each runs for real, in a subprocess, at a tiny size: these tests check that the scripts work
and that their figures are well formed and consistent, never how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, word_text, write_text

pytestmark = pytest.mark.slow  # each test runs a benchmark script, most of them training


def run_bench(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{script}.py"), *args, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout  # the table was printed before the JSON was written
    return json.loads(out.read_text())


def test_train_throughput_compares_trainer_with_bare_loop(tmp_path):
    result = run_bench(
        "train_throughput",
        tmp_path,
        "--threads",
        "1",
        "--sizes",
        "16",
        "--cells",
        "lstm,gru",
        "--precisions",
        "fp32",
        "--batch",
        "4",
        "--seq-len",
        "8",
        "--rounds",
        "1",
        "--seconds",
        "0.2",
    )
    assert [(r["cell"], r["size"], r["precision"]) for r in result["rows"]] == [
        ("lstm", 16, "fp32"),
        ("gru", 16, "fp32"),
    ]
    for row in result["rows"]:
        assert row["bare_tokens_per_s"] > 0 and row["charlm_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["charlm_tokens_per_s"] / row["bare_tokens_per_s"], rel=1e-3)
        assert (
            0 < row["fraction_of_peak"] == pytest.approx(row["gflops"] / result["matmul_peak_gflops"]["fp32"], abs=2e-3)
        )
    assert result["matmul_peak_gflops"]["fp32"] > 0


def test_generate_speed_covers_both_batches_and_every_sampling_mode(tmp_path):
    result = run_bench("generate_speed", tmp_path, "--threads", "1", "--tokens", "5", "--repeats", "1")
    rows = result["rows"]
    assert {r["batch"] for r in rows} == {1, 32}
    assert {r["sampling"] for r in rows} == {"temperature 0.8", "top-k 40", "top-p 0.9", "top-k 40 + top-p 0.9"}
    for row in rows:
        assert row["speedup"] == pytest.approx(row["charlm_tokens_per_s"] / row["bare_tokens_per_s"], rel=0.02)


def test_eval_speed_scores_the_same_tokens_both_ways(tmp_path):
    result = run_bench("eval_speed", tmp_path, "--threads", "1", "--megabytes", "0.02")
    assert result["rows"] and all(r["charlm_tokens_per_s"] > 0 for r in result["rows"])


def test_tokenize_speed_measures_encoding_and_a_big_corpus_run(tmp_path):
    result = run_bench(
        "tokenize_speed",
        tmp_path,
        "--threads",
        "1",
        "--encode-megabytes",
        "1",
        "--train-megabytes",
        "1",
        "--train-steps",
        "2",
    )
    names = [r["what"] for r in result["encode"]]
    assert names[0].startswith("UTF-8 decode") and {"charlm char", "charlm byte", "charlm sentencepiece"} <= set(names)
    assert all(r["mb_per_s"] > 0 for r in result["encode"])
    runs = {r["run"]: r for r in result["train_runs"]}
    cold, cached = runs["cold: prepare + 1 step"], runs["cached: 2 steps"]
    assert cold["seconds_to_first_step"] > 0 and cached["seconds_to_first_step"] > 0
    assert cold["peak_rss_mib"] >= runs["import charlm only"]["peak_rss_mib"] > 0


def test_quality_budget_trains_every_contender_on_one_file_and_judges_charlm(tmp_path):
    text = write_text(tmp_path / "words.txt", word_text(30_001))
    nanogpt = (REPO.parent / "shared" / "anchors" / "nanogpt" / "budget_nanogpt.py").is_file()
    result = run_bench("quality_budget", tmp_path, "--threads", "1", "--file", str(text), "--budgets", "1",
                       "--nanogpt-budgets", "1" if nanogpt else "", "--baseline-budgets", "1")  # fmt: skip
    corpus = result["corpora"]["file:words.txt"]
    # charlm keeps the last int(0.1 n) characters, nanoGPT everything after int(0.9 n) less its first
    assert corpus["split"]["charlm_val_chars"] == 3_000 and corpus["split"]["nanogpt_val_chars"] == 3_001
    assert corpus["split"]["same_scored_chars"]
    rows = {row["who"]: row for row in corpus["rows"]}
    assert set(rows) == {"charlm", "baseline"} | ({"nanoGPT"} if nanogpt else set())
    for row in rows.values():
        assert row["budget_s"] > 0 and row["parameters"] > 0 and 0 < row["val_nats"] < 10 and row["command"]
    charlm = rows["charlm"]
    assert charlm["accounting"]["training_phase_s"] >= 1  # the run used its whole budget before stopping
    assert charlm["accounting"]["time_to_first_step_s"] > 0 and charlm["shape"].count("x") == 1
    assert charlm["curve"][-1]["complete"] and charlm["curve"][-1]["val_nats"] == charlm["val_nats"]
    if nanogpt:
        (target,) = corpus["targets"]
        assert target["value"] == pytest.approx(charlm["val_nats"] - rows["nanoGPT"]["val_nats"])
        assert target["met"] == (target["value"] <= -0.10)
    assert result["machine"]["torch"] and result["precision"] == "auto"


def test_profile_train_attributes_the_step_time(tmp_path):
    result = run_bench("profile_train", tmp_path, "--threads", "1", "--warmup", "1", "--steps", "2")
    assert sum(result["groups"].values()) == pytest.approx(1.0, abs=1e-3)
    assert result["top"] and result["top"][0]["self_ms"] > 0


def test_distributed_throughput_compares_torchrun_processes_with_one(tmp_path):
    result = run_bench(
        "distributed_throughput",
        tmp_path,
        "--threads",
        "2",
        "--processes",
        "2",
        "--hidden",
        "16",
        "--batch",
        "4",
        "--seq-len",
        "8",
        "--steps",
        "30",
        "--rounds",
        "1",
    )
    rows = result["rows"]
    assert [(r["processes"], r["threads_per_process"]) for r in rows] == [(1, 2), (2, 1)]
    assert rows[0]["ratio_to_one_process"] == 1.0
    assert rows[1]["ratio_to_one_process"] == pytest.approx(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], rel=1e-2)
    assert "distributed_throughput.py" in result["command"]
