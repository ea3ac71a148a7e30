"""open_run: everything inference needs from a run directory, loaded and checked in one call.

    run = open_run("runs/mine", checkpoint="auto", device="cpu")
    run.model, run.tokenizer, run.config, run.checkpoint   # "best" or "last"

The order matters and is the same everywhere: config.json first (validated), then the
tokenizer (checked against the config: kind, vocabulary size, fingerprint), then the
weights (their header checked against the config before the model is built, their values
checked finite). The model comes back in eval mode on `device`, whatever it was trained on.
A run is opened for one task: a language model's (generation, scoring) or a classifier's
(`task="classify"`); the other kind is refused with a line saying which command takes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from charlm.config import RunConfig
from charlm.errors import CharlmError
from charlm.runs.directory import RunDirectory
from charlm.text.tokenizer import Tokenizer


@dataclass
class OpenRun:
    """A run directory opened for use: its config, tokenizer and one checkpoint's model."""

    run: RunDirectory
    config: RunConfig
    tokenizer: Tokenizer
    model: torch.nn.Module  # an RNNLM, or a SequenceClassifier for a classifier run
    checkpoint: str  # which weights were loaded: "best" or "last"

    @property
    def path(self) -> Path:
        return self.run.path


def open_run(
    path: Union[str, Path],
    checkpoint: str = "auto",
    device: Union[str, torch.device] = "cpu",
    task: str = "language_model",
) -> OpenRun:
    """Open the run at path for `task` (language_model or classify): checkpoint is best,
    last or auto (best, else last)."""
    run = RunDirectory(path)
    config = run.read_config()
    if config.task != task:
        raise CharlmError(wrong_task(run.path, config.task))
    tokenizer = run.load_tokenizer(config)
    model, which = run.load_model(checkpoint, device=torch.device(device), config=config)
    return OpenRun(run, config, tokenizer, model.eval(), which)


def wrong_task(path: Path, task: str) -> str:
    """What to say when a run of the other kind is given."""
    if task == "classify":
        return (
            f"{path} is a classifier run, not a language model; use charlm classify predict or "
            "charlm classify evaluate with it"
        )
    return f"{path} is a language-model run, not a classifier; give a run made by charlm classify train"
