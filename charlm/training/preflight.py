"""Checks a new training run passes before it starts work.

Each check fails early with one CharlmError that names the option to change, so a user
learns that the model cannot fit in memory before a long corpus preparation, not after it
(or from the OOM killer):

  check_training_memory    the model and one (B, T) batch fit in the memory left

Whether --out can be written, and the run's first files, are charlm/runs/create.py's.
"""

from __future__ import annotations

from typing import Optional

import torch

from charlm.config import ModelShape, TrainConfig
from charlm.hardware import require_memory
from charlm.models.rnnlm import training_memory_bytes


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
