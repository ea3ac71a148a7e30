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
import pickle
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from charlm.files import UMASK, atomic_write_bytes, fsync_dir, temporary_folder
from charlm.config import RunConfig
from charlm.errors import CharlmError, first_line
from charlm.models.rnnlm import RNNLM
from charlm.files import CONFIG_LIMIT, read_json, require_regular_file
from charlm.text.tokenizer import SPM_MODEL_FILE, TOKENIZER_FILE, Tokenizer, load_tokenizer
from charlm.text.tokenizer import fingerprint as tokenizer_fingerprint

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
LAST, BEST = "last", "best"
RUN_FORMAT_VERSION = RunConfig.format_version  # the config.json format this charlm writes and reads
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


def _unsafe_reason(exc: BaseException) -> str:
    """Why torch's weights-only loader refused a file, in a few words (not its advice to
    load it unsafely)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"it asks to run {found.group(1)}, and charlm never runs code from a file (it was not run)"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        return "it holds objects other than tensors and plain values (charlm never runs code from a file)"
    detail = first_line(exc).split(". ")[0][:120]  # torch goes on with advice after the first sentence
    return f"it is damaged, truncated or corrupt ({type(exc).__name__}: {detail})"


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def _shape(dims) -> str:
    return "x".join(str(d) for d in dims) or "scalar"


def _check_weights_file(path: Path, config: RunConfig) -> None:
    """The tensors of a safetensors file against the model config.json describes: same
    names (a tied matrix may be stored once), same shapes, floating point. Reads the header
    only; the model is laid out on the meta device, which allocates nothing."""
    try:
        with torch.device("meta"):
            expected = RNNLM(config.model)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise CharlmError(
            f"{path.parent.parent / CONFIG_FILE} describes a model that cannot be built ({first_line(exc)}); "
            f"restore the run's own {CONFIG_FILE}"
        ) from None
    shapes = {name: tuple(p.shape) for name, p in expected.state_dict().items()}
    aliases: dict[int, list[str]] = {}  # one entry per distinct tensor; tied weights share one
    for name, param in expected.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    fix = f"the checkpoint does not match {CONFIG_FILE} (from another run?): restore this run's own files"
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {key: f.get_slice(key) for key in f.keys()}
            found = {key: (tuple(s.get_shape()), s.get_dtype()) for key, s in stored.items()}
    except (SafetensorError, OSError) as exc:
        raise CharlmError(
            f"{path} is not a readable safetensors file ({first_line(exc)}); the checkpoint is damaged or "
            "not a charlm checkpoint: use the other checkpoint (--checkpoint best/last) or retrain"
        ) from None
    for key, (shape, dtype) in found.items():
        if key not in shapes:
            raise CharlmError(f"{path} holds a tensor {key!r} that the model in {CONFIG_FILE} does not have; {fix}")
        if shape != shapes[key]:
            raise CharlmError(
                f"{path}: tensor {key!r} is {_shape(shape)} but the model in {CONFIG_FILE} needs "
                f"{_shape(shapes[key])}; {fix}"
            )
        if dtype not in FLOAT_DTYPES:
            raise CharlmError(f"{path}: tensor {key!r} is stored as {dtype}, not floating point; the file is damaged")
    for names in aliases.values():
        if not any(name in found for name in names):
            raise CharlmError(f"{path} lacks the tensor {names[0]!r} that the model in {CONFIG_FILE} needs; {fix}")


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
        except CharlmError as exc:  # a field of the wrong type or out of range
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
        if config.tokenizer_fingerprint and tokenizer_fingerprint(tokenizer) != config.tokenizer_fingerprint:
            raise CharlmError(
                f"{path} is not the tokenizer this run was trained with: its tokens differ from the ones "
                f"{CONFIG_FILE} records (copied from another run?); {fix}"
            )
        return tokenizer

    # ----- checkpoints ----------------------------------------------------------------
    def checkpoint_dir(self, which: str) -> Optional[Path]:
        """The folder of a checkpoint, or its previous copy if a swap was interrupted."""
        for candidate in (self.path / which, self.path / f"{which}.old"):
            if os.path.lexists(candidate / WEIGHTS_FILE):  # whatever it is, loading checks it
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
                raise OSError(first_line(exc)) from exc
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
        path = folder / WEIGHTS_FILE
        require_regular_file(path, "the checkpoint is incomplete")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise CharlmError(f"{path} cannot be read ({first_line(exc)}); the checkpoint is damaged") from None
        out = {}
        for key, value in raw.items():
            try:
                out[key] = json.loads(value)
            except (ValueError, RecursionError):
                out[key] = value
        return out

    def load_model(
        self, which: str = "auto", device: Union[str, torch.device] = "cpu", config: Optional[RunConfig] = None
    ) -> tuple[RNNLM, str]:
        """Build the model from config.json and load weights; which is best, last or auto.

        The file's tensor names, shapes and types are checked against config.json before the
        model is built (so a crafted config cannot make it allocate without bound), and the
        loaded weights must be finite."""
        config = config or self.read_config()
        order = {"auto": (BEST, LAST), BEST: (BEST,), LAST: (LAST,)}.get(which)
        if order is None:
            raise CharlmError(f"checkpoint must be best, last or auto (got {which!r})")
        for name in order:
            folder = self.checkpoint_dir(name)
            if folder is not None:
                path = folder / WEIGHTS_FILE
                require_regular_file(path, "the checkpoint is incomplete: copy the whole run folder")
                _check_weights_file(path, config)
                model = RNNLM(config.model)
                try:
                    load_model(model, str(path), strict=True, device=str(device))
                except (SafetensorError, RuntimeError, OSError) as exc:
                    raise CharlmError(
                        f"{path} cannot be loaded ({first_line(exc)}); "
                        f"the checkpoint is damaged or does not match {CONFIG_FILE}"
                    ) from None
                for tensor_name, tensor in model.state_dict().items():
                    if not bool(torch.isfinite(tensor).all()):
                        other = {BEST: LAST, LAST: BEST}[name]
                        raise CharlmError(
                            f"{path}: tensor {tensor_name!r} holds NaN or infinite values, so the model cannot "
                            f"be used; try --checkpoint {other} or train again from an earlier checkpoint"
                        )
                return model.to(device), name
        raise CharlmError(
            f"{self.path} has no {' or '.join(order)} checkpoint yet (training has not saved one); "
            "train it until it checkpoints, or give another run"
        )

    def load_trainer_state(self) -> dict[str, Any]:
        """last/trainer_state.pt through torch.load(weights_only=True): plain tensors and
        containers only. A file that would run code under plain pickle is refused, unrun."""
        folder = self.checkpoint_dir(LAST)
        if folder is None:
            raise CharlmError(
                f"{self.path} has no trainer state to resume from (no last checkpoint yet); start a new run instead"
            )
        path = folder / STATE_FILE
        fix = "resume is impossible: start a new run with --overwrite (generate and perplexity still work)"
        require_regular_file(path, f"the checkpoint has no trainer state; {fix}", fix)
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise CharlmError(f"{path} cannot be loaded safely: {_unsafe_reason(exc)}; {fix}") from None
        if not isinstance(state, dict):
            raise CharlmError(f"{path} is not a charlm trainer state (not a dictionary); {fix}")
        return state

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
