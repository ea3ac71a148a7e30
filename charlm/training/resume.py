"""Resuming a run: which options may change, the new values applied to the saved config,
and the command that continues a run, as every message shows it.

A resumed run continues the same run exactly, so its corpus, tokenizer, model and batching
stay as saved; stop limits, cadence, hardware, the learning rate, clipping and the
divergence guard may change. One function words the resume command, so the engine's
messages and the command line's agree, and a run under torchrun is told to resume under
torchrun.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from charlm.config import TrainConfig
from charlm.errors import CharlmError

RESUMABLE_OPTIONS = frozenset({
    "max_steps", "max_time", "epochs", "eval_every", "eval_tokens", "checkpoint_every", "checkpoint_seconds", "log_every",
    "sample_length", "device", "threads", "precision", "compile",
    "lr", "grad_clip", "on_divergence", "spike_factor", "skip_limit", "max_rollbacks", "rollback_lr_factor",
})  # fmt: skip


def _trains(run: Union[str, Path]) -> str:
    """The command that trains the run in `run`: a classifier's config.json says so."""
    try:
        task = json.loads((Path(run) / "config.json").read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        task = None
    return "charlm classify train" if task == "classify" else "charlm train"


def resume_command(run: Union[str, Path], distributed: bool = False, extra: str = "") -> str:
    """The command that continues the run in `run`; `extra` adds options (e.g. "--lr 0.003")."""
    command = f"{_trains(run)} --out {run} --resume" + (f" {extra}" if extra else "")
    if distributed:
        return f"torchrun ... -m {command} (any number of processes)"
    return command


def check_resumable(given: Iterable[str]) -> None:
    """Refuse options set for a resume that a resumed run cannot change (CharlmError)."""
    fixed = sorted(set(given) - RESUMABLE_OPTIONS)
    if fixed:
        names = ", ".join("--" + name.replace("_", "-") for name in fixed)
        raise CharlmError(
            f"{names} cannot change when resuming; only stop limits, cadence, hardware, --lr, --grad-clip "
            "and the divergence options can"
        )


def apply_resume_options(config: TrainConfig, values: dict[str, Any], given: Iterable[str]) -> dict[str, list]:
    """Set the given options' new values on a saved run's TrainConfig (in place) and validate it.

    `given` names the options the user set; each must be resumable (check_resumable) and have
    its value in `values`. Returns those whose value changed, as {name: [old, new]}, which the
    engine records and acts on (a new lr replaces a rate lowered by rollbacks)."""
    given = set(given)
    check_resumable(given)
    changed: dict[str, list] = {}
    for name in sorted(given):
        old = getattr(config, name)
        if old != values[name]:
            changed[name] = [old, values[name]]
        setattr(config, name, values[name])
    config.validate()
    return changed


def check_not_finished(reason: Optional[str]) -> None:
    """Refuse to resume a run that has already stopped for good: it reached a stop limit
    (a larger one continues it) or stopped early (it is finished)."""
    if reason in ("max_steps", "max_time", "epochs"):
        option = "--" + reason.replace("_", "-")
        raise CharlmError(f"the run already reached its {option} limit; give a larger {option} to continue")
    if reason == "early_stop":
        raise CharlmError(
            "the run already stopped early (its validation stopped improving); it is finished: use it, or start a new run"
        )
