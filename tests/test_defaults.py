"""The fixed settings: what `charlm train --no-auto-size` uses when no model or batch option is given
(and where the budget rule starts from: its dropout, cell, layers, window and schedule).

They were tuned on tiny Shakespeare (BENCHMARKS.md records the trials); these tests keep the
code, the README and a real run in agreement with each other. The budget rule's own tests
are in test_sizing.py.
"""

from __future__ import annotations

import json

import torch
from helpers import REPO, invoke

from charlm.config import ModelConfig, TrainConfig
from charlm.hardware import cpu_supports_bf16, resolve_precision
from charlm.models.rnnlm import RNNLM


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _readme_row(option_cell: str) -> list[str]:
    """The default column of the README options-table row whose first cell is option_cell."""
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] == option_cell:
            return [part.strip() for part in cells[1].split(",")]
    raise AssertionError(f"README has no options row for {option_cell}")


def test_readme_states_the_defaults_the_code_uses():
    model, train = ModelConfig(vocab_size=65), TrainConfig()
    assert _readme_row("`--cell`, `--layers`, `--hidden`, `--embed`") == [
        f"`{model.cell}`",
        str(model.layers),
        str(model.hidden),
        str(model.embed),
    ]
    dropout, tie = _readme_row("`--dropout`, `--tie-weights`")
    assert dropout == _number(model.dropout) and tie == ("on" if model.tie_weights else "off")
    assert _readme_row("`--batch-size`, `--seq-len`") == [str(train.batch_size), str(train.seq_len)]
    lr, warmup, floor = _readme_row("`--lr`, `--warmup-steps`, `--min-lr-ratio`")
    assert float(lr) == train.lr and int(warmup) == train.warmup_steps and float(floor) == train.min_lr_ratio


def test_auto_precision_on_the_cpu_is_bf16_exactly_where_it_is_native():
    expected = "bf16" if cpu_supports_bf16() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_a_run_with_auto_size_off_records_the_fixed_settings(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 400)
    out = tmp_path / "run"
    result = invoke("train", "--data", str(corpus), "--out", str(out), "--max-steps", "1", "--threads", "1",
                    "--sample-length", "0", "--no-auto-size")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    expected_model = ModelConfig(vocab_size=config["model"]["vocab_size"]).to_dict()
    assert config["model"] == expected_model
    for name in ("batch_size", "seq_len", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip"):
        assert config["train"][name] == getattr(TrainConfig(), name), name
    start = next(
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "start"
    )
    assert start["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert start["parameters"] == sum(p.numel() for p in RNNLM(ModelConfig(**expected_model)).parameters())
