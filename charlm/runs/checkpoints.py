"""Checkpoints of a run: writing them, reading them back, and checking them first.

A checkpoint is a folder (last/ or best/) holding the weights (model.safetensors, with JSON
metadata such as step and val_loss) and, for last/, the trainer state (trainer_state.pt).
It is written in full under a temporary name and swapped in, so a crash leaves the previous
checkpoint intact under `NAME` or `NAME.old`. Loading never runs code from these files:
weights are safetensors, checked against config.json before the model is built; the
trainer state goes through torch.load(weights_only=True). Every function takes the run
folder; RunDirectory's methods of the same names call them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model

from charlm.config import RunConfig
from charlm.errors import CharlmError, first_line
from charlm.files import UMASK, fsync_dir, require_regular_file, temporary_folder
from charlm.models.classifier import SequenceClassifier
from charlm.models.rnnlm import RNNLM
from charlm.runs.layout import BEST, CONFIG_FILE, LAST, STATE_FILE, WEIGHTS_FILE

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


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


def _shape(dims) -> str:
    return "x".join(str(d) for d in dims) or "scalar"


def build_model(config: RunConfig) -> torch.nn.Module:
    """The model config.json describes, freshly initialised: an RNNLM, or a
    SequenceClassifier for a classifier run."""
    return SequenceClassifier(config.model) if config.is_classifier else RNNLM(config.model)


def check_weights_file(path: Path, config: RunConfig) -> None:
    """The tensors of a safetensors file against the model config.json describes (see
    check_tensors). The model is laid out on the meta device, which allocates nothing."""
    try:
        with torch.device("meta"):
            expected = build_model(config)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise CharlmError(
            f"{path.parent.parent / CONFIG_FILE} describes a model that cannot be built ({first_line(exc)}); "
            f"restore the run's own {CONFIG_FILE}"
        ) from None
    check_tensors(path, expected)


def _tied_names(model: torch.nn.Module) -> list[list[str]]:
    """The state-dict names of each distinct parameter: tied weights share one entry."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    return list(aliases.values())


def check_tensors(path: Path, expected: torch.nn.Module) -> None:
    """The tensors of a safetensors file against a model laid out as it should be: same
    names (a tied matrix may be stored once), same shapes, floating point. Reads the header
    only."""
    shapes = {name: tuple(p.shape) for name, p in expected.state_dict().items()}
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
    for names in _tied_names(expected):
        if not any(name in found for name in names):
            raise CharlmError(f"{path} lacks the tensor {names[0]!r} that the model in {CONFIG_FILE} needs; {fix}")


def checkpoint_dir(root: Path, which: str) -> Optional[Path]:
    """The folder of a checkpoint, or its previous copy if a swap was interrupted."""
    for candidate in (root / which, root / f"{which}.old"):
        if os.path.lexists(candidate / WEIGHTS_FILE):  # whatever it is, loading checks it
            return candidate
    return None


def save_checkpoint(
    root: Path,
    which: str,
    model: torch.nn.Module,
    metadata: dict[str, Any],
    trainer_state: Optional[dict[str, Any]] = None,
) -> Path:
    target = root / which
    work = temporary_folder(root, f".{which}.")
    try:
        meta = {key: json.dumps(value) for key, value in metadata.items()}
        try:
            save_model(_unwrap(model), str(work / WEIGHTS_FILE), metadata=meta)
            if trainer_state is not None:
                with open(work / STATE_FILE, "wb") as f:  # through Python's file, so its OSError is kept
                    torch.save(trainer_state, f)
        except (SafetensorError, RuntimeError) as exc:  # how both writers report a failed write
            raise _as_os_error(exc) from exc
        for item in work.iterdir():
            os.chmod(item, 0o666 & ~UMASK)  # safetensors creates its file private (0600)
            with open(item, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(work)
        old = root / f"{which}.old"
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(target, old)
        # until this rename, the previous checkpoint is intact under one of the two names
        os.rename(work, target)
        fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def checkpoint_metadata(root: Path, which: str) -> dict[str, Any]:
    folder = checkpoint_dir(root, which)
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
    root: Path, config: RunConfig, which: str = "auto", device: Union[str, torch.device] = "cpu"
) -> tuple[torch.nn.Module, str]:
    """Build the model config describes (an RNNLM, or a SequenceClassifier for a classifier
    run) and load its weights; which is best, last or auto.

    The file's tensor names, shapes and types are checked against config.json before the
    model is built (so a crafted config cannot make it allocate without bound), and the
    loaded weights must be finite."""
    order = {"auto": (BEST, LAST), BEST: (BEST,), LAST: (LAST,)}.get(which)
    if order is None:
        raise CharlmError(f"checkpoint must be best, last or auto (got {which!r})")
    for name in order:
        folder = checkpoint_dir(root, name)
        if folder is not None:
            path = folder / WEIGHTS_FILE
            require_regular_file(path, "the checkpoint is incomplete: copy the whole run folder")
            check_weights_file(path, config)
            model = build_model(config)
            try:
                load_safetensors_model(model, str(path), strict=True, device=str(device))
            except (SafetensorError, RuntimeError, OSError) as exc:
                raise CharlmError(
                    f"{path} cannot be loaded ({first_line(exc)}); "
                    f"the checkpoint is damaged or does not match {CONFIG_FILE}"
                ) from None
            _require_finite(path, model.state_dict().items(), name)
            return model.to(device), name
    raise CharlmError(
        f"{root} has no {' or '.join(order)} checkpoint yet (training has not saved one); "
        "train it until it checkpoints, or give another run"
    )


def read_weights(root: Path, which: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of checkpoint `which` (best or last) for a model laid out like `model`,
    whatever the task: a state dict on the CPU, checked as load_model checks a file (names,
    shapes, floating point, finite values), for `model.load_state_dict` (resume, rollback)."""
    folder = checkpoint_dir(root, which)
    if folder is None:
        raise CharlmError(
            f"{root} has no {which} checkpoint yet (training has not saved one); "
            "train it until it checkpoints, or give another run"
        )
    path = folder / WEIGHTS_FILE
    require_regular_file(path, "the checkpoint is incomplete: copy the whole run folder")
    check_tensors(path, model)
    try:
        weights = load_safetensors_file(str(path), device="cpu")
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise CharlmError(
            f"{path} cannot be loaded ({first_line(exc)}); the checkpoint is damaged or does not match {CONFIG_FILE}"
        ) from None
    for names in _tied_names(model):  # a tied matrix is stored under one of its names
        stored = next(weights[name] for name in names if name in weights)
        for name in names:
            weights.setdefault(name, stored)
    _require_finite(path, weights.items(), which)
    return weights


def _require_finite(path: Path, tensors, which: str) -> None:
    for tensor_name, tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            other = {BEST: LAST, LAST: BEST}[which]
            raise CharlmError(
                f"{path}: tensor {tensor_name!r} holds NaN or infinite values, so the model cannot "
                f"be used; try --checkpoint {other} or train again from an earlier checkpoint"
            )


def load_trainer_state(root: Path) -> dict[str, Any]:
    """last/trainer_state.pt through torch.load(weights_only=True): plain tensors and
    containers only. A file that would run code under plain pickle is refused, unrun."""
    folder = checkpoint_dir(root, LAST)
    if folder is None:
        raise CharlmError(
            f"{root} has no trainer state to resume from (no last checkpoint yet); start a new run instead"
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


def _as_os_error(exc: BaseException) -> OSError:
    """A writer's failure as an OSError, with the errno where one can be found, so a full
    disk is told apart: torch.save keeps the OSError of the file it wrote to as the
    context, safetensors names it in its message ("os error 28")."""
    if isinstance(exc.__context__, OSError):
        return exc.__context__
    found = re.search(r"os error (\d+)|code: (\d+)", str(exc))
    if found:
        number = int(found.group(1) or found.group(2))
        return OSError(number, os.strerror(number))
    return OSError(first_line(exc))
