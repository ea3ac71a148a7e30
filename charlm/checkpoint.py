"""The run directory: a trained model with everything needed to use or resume it.

    run/
      config.json            RunConfig: model shape, training options, tokenizer kind
      tokenizer.json         the tokenizer (plus tokenizer.model for sentencepiece)
      last/model.safetensors weights at the latest checkpoint
      last/trainer_state.pt  optimizer, step, RNG states, data position, carried state
      best/model.safetensors weights with the best validation loss so far
      metrics.jsonl          one JSON object per log / eval / checkpoint event

Loading never runs code from these files: weights are safetensors, the config is JSON, and
the trainer state is read with torch.load(weights_only=True). Every file is written
atomically, and a checkpoint folder (weights + trainer state together) is written in full
under a temporary name and swapped in, so a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from .atomic import UMASK, atomic_write_bytes, fsync_dir, temporary_folder
from .config import RunConfig
from .errors import CharlmError
from .model import RNNLM
from .tokenizer import SPM_MODEL_FILE, TOKENIZER_FILE, Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
LAST, BEST = "last", "best"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE, SPM_MODEL_FILE, LAST, BEST, LAST + ".old", BEST + ".old")
# metrics events that mark a session of a run rather than its progress through the steps
SESSION_EVENTS = ("start", "resume", "end")


def _is_leftover(name: str) -> bool:
    """A temporary file or folder of an interrupted atomic write (see atomic.py)."""
    if not name.startswith("."):
        return False
    if name.startswith((f".{LAST}.", f".{BEST}.")):
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{base}.") for base in RUN_FILES)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile and DDP wrap the model and prefix its state-dict keys; save the original.
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


class RunDirectory:
    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    # ----- creating -------------------------------------------------------------------
    def is_run(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_dir(LAST) is not None or self.checkpoint_dir(BEST) is not None

    def _holds_only_run_files(self) -> bool:
        return all(item.name in RUN_FILES or _is_leftover(item.name) for item in self.path.iterdir())

    def remove_leftovers(self) -> list[str]:
        """Delete the temporary files a killed process left behind; return their names."""
        removed = []
        for item in self.path.iterdir():
            if _is_leftover(item.name):
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
        if resume:
            if not self.is_run():
                if path.is_dir() and any(path.iterdir()) and self._holds_only_run_files():
                    raise CharlmError(
                        f"--resume: {path} holds a run that stopped before its first checkpoint; "
                        "start it again with --overwrite"
                    )
                raise CharlmError(f"--resume: {path} holds no charlm run to resume; check --out")
            return
        if path.is_dir() and any(path.iterdir()):
            if not self.is_run() and not self._holds_only_run_files():
                raise CharlmError(f"--out {path} is not empty and is not a charlm run; choose a new folder")
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
        path = self.path / CONFIG_FILE
        if not self.path.is_dir():
            raise CharlmError(f"{self.path} does not exist; give the folder of a charlm run")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CharlmError(f"{self.path} is not a charlm run (no {CONFIG_FILE}); give a run folder") from None
        except (OSError, ValueError) as exc:
            raise CharlmError(f"{path} cannot be read ({exc}); the run directory is damaged") from None
        if not isinstance(data, dict):
            raise CharlmError(f"{path} is not a charlm config; the run directory is damaged")
        return RunConfig.from_dict(data)

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.save(self.path)

    def load_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path)

    # ----- checkpoints ----------------------------------------------------------------
    def checkpoint_dir(self, which: str) -> Optional[Path]:
        """The folder of a checkpoint, or its previous copy if a swap was interrupted."""
        for candidate in (self.path / which, self.path / f"{which}.old"):
            if (candidate / WEIGHTS_FILE).is_file():
                return candidate
        return None

    def save_checkpoint(
        self,
        which: str,
        model: torch.nn.Module,
        metadata: dict[str, Any],
        trainer_state: Optional[dict[str, Any]] = None,
    ) -> Path:
        target = self.path / which
        work = temporary_folder(self.path, f".{which}.")
        try:
            meta = {key: json.dumps(value) for key, value in metadata.items()}
            try:
                save_model(_unwrap(model), str(work / WEIGHTS_FILE), metadata=meta)
                if trainer_state is not None:
                    torch.save(trainer_state, work / STATE_FILE)
            except (SafetensorError, RuntimeError) as exc:  # how both writers report a failed write
                raise OSError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
            for item in work.iterdir():
                os.chmod(item, 0o666 & ~UMASK)  # safetensors creates its file private (0600)
                with open(item, "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(work)
            old = self.path / f"{which}.old"
            if target.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.rename(target, old)
            # until this rename, the previous checkpoint is intact under one of the two names
            os.rename(work, target)
            fsync_dir(self.path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        return target

    def checkpoint_metadata(self, which: str) -> dict[str, Any]:
        folder = self.checkpoint_dir(which)
        if folder is None:
            return {}
        try:
            with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
                raw = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise CharlmError(f"{folder / WEIGHTS_FILE} cannot be read ({exc}); the checkpoint is damaged") from None
        out = {}
        for key, value in raw.items():
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    def load_model(
        self, which: str = "auto", device: Union[str, torch.device] = "cpu", config: Optional[RunConfig] = None
    ) -> tuple[RNNLM, str]:
        """Build the model from config.json and load weights; which is best, last or auto."""
        config = config or self.read_config()
        order = {"auto": (BEST, LAST), BEST: (BEST,), LAST: (LAST,)}.get(which)
        if order is None:
            raise CharlmError(f"checkpoint must be best, last or auto (got {which!r})")
        for name in order:
            folder = self.checkpoint_dir(name)
            if folder is not None:
                model = RNNLM(config.model)
                try:
                    load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(device))
                except (SafetensorError, RuntimeError, OSError) as exc:
                    raise CharlmError(
                        f"{folder / WEIGHTS_FILE} cannot be loaded ({str(exc).splitlines()[0]}); "
                        "the checkpoint is damaged or does not match config.json"
                    ) from None
                return model.to(device), name
        raise CharlmError(f"{self.path} has no {' or '.join(order)} checkpoint yet; train it first")

    def load_trainer_state(self) -> dict[str, Any]:
        folder = self.checkpoint_dir(LAST)
        if folder is None or not (folder / STATE_FILE).is_file():
            raise CharlmError(f"{self.path} has no trainer state to resume from; start a new run instead")
        try:
            return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise CharlmError(
                f"{folder / STATE_FILE} cannot be loaded safely ({type(exc).__name__}); the checkpoint is damaged"
            ) from None

    # ----- metrics --------------------------------------------------------------------
    def append_metrics(self, event: dict[str, Any], durable: bool = False) -> int:
        """Append one event; return the file's size after it. durable: fsync it too."""
        record = {"time": round(time.time(), 3), **event}
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
            return f.tell()

    def rewind_metrics(self, size: int) -> int:
        """Forget the progress events written after a checkpoint, before a run continues from it.

        `size` is the metrics file's length when the checkpoint was taken. Events after it
        (train, eval, checkpoint, ...) are about steps the resumed run will take again, so
        they go; session markers (start, resume, end) stay, as the run's history. A line
        torn by a crash goes too. Returns how many lines were dropped."""
        path = self.path / METRICS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        if len(data) <= size:
            return 0
        kept, dropped = [], 0
        for line in data[size:].splitlines():
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                event = None
            if event in SESSION_EVENTS:
                kept.append(line + b"\n")
            else:
                dropped += 1
        if dropped:
            atomic_write_bytes(path, data[:size] + b"".join(kept))
        return dropped

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS_FILE
        if not path.is_file():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash
        return events
