"""Checks a new training run passes before it starts work.

Each check fails early with one CharlmError that names the option to change, so a user
learns that the model cannot fit in memory before a long corpus preparation, not after it
(or from the OOM killer):

  check_precision_runs     torch can run this cell in this precision on this CPU
  check_training_memory    the model and one (B, T) batch fit in the memory left

Whether --out can be written, and the run's first files, are charlm/runs/create.py's.
"""

from __future__ import annotations

from typing import Optional

import torch

from charlm.config import ModelShape, TrainConfig
from charlm.errors import OptionError
from charlm.hardware import autocast, require_memory
from charlm.models.rnnlm import RNNLM, training_memory_bytes


def check_precision_runs(cell: str, device: torch.device, precision: str) -> None:
    """Refuse a precision torch cannot run for this cell here, before any real work.

    On the CPU, torch's half-precision recurrent kernels depend on the build and the CPU
    (torch 2.13's oneDNN has no fp16 LSTM here; its GRU runs fp16 inputs in fp32), so a
    one-step probe with a tiny cell answers it; CUDA runs every cell in fp16 and bf16."""
    if precision == "fp32" or device.type != "cpu":
        return
    probe = RNNLM(ModelShape(cell=cell, layers=1, hidden=8, embed=8, dropout=0.0).with_vocabulary(4))
    try:
        with autocast(device, precision):
            logits, _ = probe(torch.zeros(1, 2, dtype=torch.long))
        logits.float().sum().backward()
    except RuntimeError:
        other = "bf16 or fp32" if precision == "fp16" else "fp32"
        raise OptionError(
            "precision",
            f"{precision}: torch cannot run a {cell} cell in {precision} on this CPU; use --precision {other}",
        ) from None


def _vocab_floor(config: TrainConfig) -> int:
    """The smallest vocabulary the tokenizer can end up with, before it is fitted."""
    return {"byte": 256, "sentencepiece": 261}.get(config.tokenizer, 2)


def check_training_memory(
    shape: ModelShape,
    config: TrainConfig,
    device: torch.device,
    precision: str,
    vocab_size: Optional[int] = None,
    processes: int = 1,
) -> None:
    """Raise CharlmError when a model of this shape plus one training batch clearly cannot fit.

    vocab_size None: the smallest vocabulary the tokenizer can give, for a check before the
    corpus is read (a new run checks again once it is known; a resumed run knows it from
    config.json). Always before anything is allocated. Under torchrun each of the
    `processes` holds the whole model and its share of the lanes.
    """
    model = shape.with_vocabulary(vocab_size or _vocab_floor(config))
    half = precision in ("bf16", "fp16")
    lanes = max(1, config.batch_size // max(processes, 1))
    needed = training_memory_bytes(model, lanes, config.seq_len, half_activations=half)
    shape = (
        f"a {model.layers}-layer {model.cell} of --hidden {model.hidden} and --embed {model.embed} "
        f"with --batch-size {config.batch_size} x --seq-len {config.seq_len}"
    )
    require_memory(needed, device, f"training {shape}", "lower --hidden, --layers, --batch-size or --seq-len")
