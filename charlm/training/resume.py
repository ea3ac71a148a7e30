"""Resuming a run: the command that continues it, as every message shows it.

One function words it, so the trainer's messages and the command line's agree, and a run
under torchrun is told to resume under torchrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union


def resume_command(run: Union[str, Path], distributed: bool = False, extra: str = "") -> str:
    """The command that continues the run in `run`; `extra` adds options (e.g. "--lr 0.003")."""
    command = f"charlm train --out {run} --resume" + (f" {extra}" if extra else "")
    if distributed:
        return f"torchrun ... -m {command} (any number of processes)"
    return command
