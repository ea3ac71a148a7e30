"""The run directory: a trained model with everything needed to use or resume it.

RunDirectory owns the folder as a whole (is it a run, may a new or resumed run use it,
clearing it for --overwrite, leftovers of interrupted writes), config.json (written and read
back validated) and the tokenizer (checked against the config). Checkpoints live in
checkpoints.py and the metrics journal in metrics.py; the methods of the same names here
call them, so one object answers for the whole run. The file layout is in layout.py.

Loading never runs code from these files: weights are safetensors, the config is JSON, and
the trainer state is read with torch.load(weights_only=True). Every file is written
atomically, and a checkpoint folder is swapped in whole, so a crash leaves the last one intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch

from charlm.config import RunConfig
from charlm.errors import CharlmError, OptionError
from charlm.files import CONFIG_LIMIT, atomic_write_bytes, read_json
from charlm.runs import checkpoints, metrics
from charlm.runs.layout import (  # noqa: F401  (re-exported: callers import the names from here)
    BEST,
    CONFIG_FILE,
    LAST,
    METRICS_FILE,
    RUN_FILES,
    RUN_FORMAT_VERSION,
    STATE_FILE,
    WEIGHTS_FILE,
    is_leftover,
)
from charlm.text.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer, same_tokenizer


class RunDirectory:
    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    # ----- creating -------------------------------------------------------------------
    def is_run(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_dir(LAST) is not None or self.checkpoint_dir(BEST) is not None

    def _holds_only_run_files(self) -> bool:
        return all(item.name in RUN_FILES or is_leftover(item.name) for item in self.path.iterdir())

    def remove_leftovers(self) -> list[str]:
        """Delete the temporary files a killed process left behind; return their names."""
        removed = []
        for item in self.path.iterdir():
            if is_leftover(item.name):
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
                removed.append(item.name)
        return removed

    def check(self, resume: bool = False, overwrite: bool = False) -> None:
        """Raise CharlmError if the folder may not be used for a new (or resumed) run; change nothing."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise CharlmError(f"--out {path} is a file; choose a folder for the run")
        damaged = (
            f"{path / CONFIG_FILE} is missing or not a regular file, though the run has checkpoints; "
            "restore config.json from a copy of the run"
        )
        if resume:
            if self.is_run() and self.has_checkpoint():
                return
            if path.is_dir() and self.has_checkpoint():
                raise CharlmError(f"--resume: {damaged}")
            if path.is_dir() and any(path.iterdir()) and self._holds_only_run_files():
                raise CharlmError(
                    f"--resume: {path} holds a run that stopped before its first checkpoint; "
                    "start it again with --overwrite"
                )
            raise CharlmError(f"--resume: {path} holds no charlm run to resume; check --out")
        if path.is_dir() and any(path.iterdir()):
            if not self.is_run() and not self._holds_only_run_files():
                raise CharlmError(f"--out {path} is not empty and is not a charlm run; choose a new folder")
            if not self.is_run() and self.has_checkpoint() and not overwrite:
                raise CharlmError(f"--out {damaged}, or pass --overwrite to replace the run")
            if not self.is_run() or not self.has_checkpoint():
                if not overwrite:
                    raise CharlmError(
                        f"--out {path} holds a run that stopped before its first checkpoint; "
                        "pass --overwrite to start it again"
                    )
                return
            if not overwrite:
                raise CharlmError(
                    f"--out {path} already holds a run; pass --resume to continue it or --overwrite to replace it"
                )

    def prepare(self, resume: bool = False, overwrite: bool = False) -> None:
        """Check the folder may be used for a new run (or a resumed one) and create it."""
        self.check(resume, overwrite)
        path = self.path
        if resume:
            return
        if path.is_dir() and any(path.iterdir()):
            self.remove_leftovers()
            for name in RUN_FILES:
                target = path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CharlmError(f"cannot create --out {path}: {exc.strerror}") from None

    # ----- config and tokenizer -------------------------------------------------------
    def write_config(self, config: RunConfig) -> None:
        text = json.dumps(config.to_dict(), indent=2, sort_keys=False) + "\n"
        atomic_write_bytes(self.path / CONFIG_FILE, text.encode("utf-8"))

    def read_config(self) -> RunConfig:
        """config.json, parsed and validated; every problem names the file."""
        path = self.path / CONFIG_FILE
        if not self.path.exists():
            raise CharlmError(f"{self.path} does not exist; give the folder of a charlm run")
        if not self.path.is_dir():
            raise CharlmError(f"{self.path} is a file, not a run folder; give the folder of a charlm run")
        if not os.path.lexists(path):
            raise CharlmError(f"{self.path} is not a charlm run (no {CONFIG_FILE}); give a run folder")
        data = read_json(path, CONFIG_LIMIT, "give the folder of a charlm run")
        fix = f"restore the run's own {CONFIG_FILE} or retrain"
        if not isinstance(data, dict):
            raise CharlmError(f"{path} is not a charlm run config (not a JSON object); {fix}")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CharlmError(f"{path} is not a charlm run config (no valid format_version); {fix}")
        if version > RUN_FORMAT_VERSION:
            raise CharlmError(
                f"{path} has run format {version}, newer than this charlm reads ({RUN_FORMAT_VERSION}); "
                "upgrade charlm to use this run"
            )
        for section in ("model", "train"):
            if not isinstance(data.get(section), dict):
                raise CharlmError(f"{path}: {section!r} is missing or not a JSON object; {fix}")
        if not isinstance(data.get("tokenizer_kind"), str):
            raise CharlmError(f"{path}: 'tokenizer_kind' is missing or not text; {fix}")
        try:
            return RunConfig.from_dict(data)
        except OptionError as exc:  # a field of the wrong type or out of range: named as such
            raise exc.within(f"{path}: ", f"; the file is damaged or was edited by hand: {fix}") from None
        except CharlmError as exc:
            raise CharlmError(f"{path}: {exc}; the file is damaged or was edited by hand: {fix}") from None

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.save(self.path)

    def load_tokenizer(self, config: Optional[RunConfig] = None) -> Tokenizer:
        """The run's tokenizer, checked against config.json (its kind and vocabulary size):
        a tokenizer.json copied from another run is refused, not used to misread ids."""
        tokenizer = load_tokenizer(self.path)
        config = config or self.read_config()
        path, fix = self.path / TOKENIZER_FILE, f"restore this run's own {TOKENIZER_FILE}"
        if tokenizer.kind != config.tokenizer_kind:
            raise CharlmError(
                f"{path} holds a {tokenizer.kind} tokenizer but {CONFIG_FILE} says the run used "
                f"{config.tokenizer_kind} (copied from another run?); {fix}"
            )
        if tokenizer.vocab_size != config.model.vocab_size:
            raise CharlmError(
                f"{path} has a vocabulary of {tokenizer.vocab_size:,} tokens but the model in {CONFIG_FILE} "
                f"was built for {config.model.vocab_size:,} (copied from another run?); {fix}"
            )
        if config.tokenizer_fingerprint and not same_tokenizer(tokenizer, config.tokenizer_fingerprint):
            raise CharlmError(
                f"{path} is not the tokenizer this run was trained with: its tokens differ from the ones "
                f"{CONFIG_FILE} records (copied from another run?); {fix}"
            )
        return tokenizer

    # ----- checkpoints (checkpoints.py) --------------------------------------------
    def checkpoint_dir(self, which: str) -> Optional[Path]:
        """The folder of a checkpoint, or its previous copy if a swap was interrupted."""
        return checkpoints.checkpoint_dir(self.path, which)

    def save_checkpoint(
        self,
        which: str,
        model: torch.nn.Module,
        metadata: dict[str, Any],
        trainer_state: Optional[dict[str, Any]] = None,
    ) -> Path:
        return checkpoints.save_checkpoint(self.path, which, model, metadata, trainer_state)

    def checkpoint_metadata(self, which: str) -> dict[str, Any]:
        return checkpoints.checkpoint_metadata(self.path, which)

    def load_model(
        self, which: str = "auto", device: Union[str, torch.device] = "cpu", config: Optional[RunConfig] = None
    ) -> tuple[torch.nn.Module, str]:
        """The model config.json describes (an RNNLM, or a SequenceClassifier for a classifier
        run) with the weights of checkpoint which (best, last or auto)."""
        return checkpoints.load_model(self.path, config or self.read_config(), which, device)

    def read_weights(self, which: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Checkpoint which's weights for a model laid out like `model` (any task), checked."""
        return checkpoints.read_weights(self.path, which, model)

    def load_trainer_state(self) -> dict[str, Any]:
        return checkpoints.load_trainer_state(self.path)

    # ----- metrics (metrics.py) -------------------------------------------------------
    def append_metrics(self, event: dict[str, Any], durable: bool = False) -> int:
        """Append one event; return the file's size after it. durable: fsync it too."""
        return metrics.append_metrics(self.path, event, durable)

    def rewind_metrics(self, size: int) -> int:
        """Forget the progress events written after a checkpoint taken at file size `size`."""
        return metrics.rewind_metrics(self.path, size)

    def read_metrics(self) -> list[dict[str, Any]]:
        return metrics.read_metrics(self.path)
