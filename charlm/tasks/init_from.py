"""The language-model run a new run starts from (`charlm train --init-from RUN`).

To adapt a trained model to new text, a new run takes three things from RUN: the weights
of its best checkpoint (else its last), its tokenizer (the new text is encoded with it, not
fitted again), and its model's shape (cell, layers, hidden, embed, tied output). Dropout
and the regularisers may be given anew, else they are RUN's. Everything else is the new
run's own: a new optimizer, step 0, its own config.json, which records where it started
(`extra.init_from`). `open_init_source` checks RUN before any work: a charlm run, a
language model, with a checkpoint; `InitSource.fix` refuses shape and tokenizer options that
contradict it. A resumed run reads its own checkpoints and its own copy of the tokenizer;
RUN may be gone by then.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from charlm.config import ModelShape, RunConfig
from charlm.errors import CharlmError, OptionError
from charlm.files import CONFIG_LIMIT, read_json
from charlm.runs import checkpoints
from charlm.runs.directory import BEST, CONFIG_FILE, LAST, WEIGHTS_FILE, RunDirectory
from charlm.text.corpus import PreparedCorpus
from charlm.text.tokenizer import Tokenizer, fingerprint, load_tokenizer
from charlm.training import distributed
from charlm.training.distributed import World

# what RUN decides and a new run may not give otherwise: the parameters' layout, the tokenizer
SHAPE_FROM_RUN = ("cell", "layers", "hidden", "embed", "tie_weights")
TOKENIZER_FROM_RUN = ("tokenizer", "vocab_size", "spm_model_type")
# may be given anew; else RUN's
REGULARISERS = ("dropout", "dropout_kind", "weight_dropout", "embed_dropout")
LANGUAGE_MODEL = "language_model"
EXAMPLES = 3  # unknown characters named in the note


@dataclass
class InitSource:
    """RUN, checked: where it is, which checkpoint the new run starts from, its config."""

    path: Path  # absolute
    checkpoint: str  # best or last
    step: Optional[int]  # the checkpoint's step, as its metadata says
    config: RunConfig
    tokenizer_fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """What config.json records as extra.init_from."""
        return {"run": str(self.path), "checkpoint": self.checkpoint, "step": self.step,
                "tokenizer_fingerprint": self.tokenizer_fingerprint}  # fmt: skip

    def describe(self) -> str:
        step = f", step {self.step:,}" if isinstance(self.step, int) else ""
        return f"{self.path}'s {self.checkpoint} checkpoint{step}"

    def fix(self, shape: ModelShape, options: dict[str, Any], given: set[str]) -> ModelShape:
        """RUN's shape (with the regularisers given, else RUN's), and RUN's tokenizer options
        set in `options` (in place); an option given that contradicts RUN is refused."""
        saved = self.config
        theirs = {**saved.model.shape.to_dict(), "tokenizer": saved.tokenizer_kind,
                  "vocab_size": saved.train.vocab_size, "spm_model_type": saved.train.spm_model_type}  # fmt: skip
        ours = {**shape.to_dict(), **options}
        # --vocab-size and --spm-model mean nothing to a char or byte tokenizer (as without --init-from)
        spm = saved.tokenizer_kind == "sentencepiece"
        for name in SHAPE_FROM_RUN + (TOKENIZER_FROM_RUN if spm else TOKENIZER_FROM_RUN[:1]):
            if name not in given or ours[name] == theirs[name]:
                continue
            if name == "vocab_size" and ours[name] == saved.model.vocab_size:
                continue  # the size it has, below the size it was asked for
            if name in SHAPE_FROM_RUN:
                whose, keeps = f"model has {name} {_shown(theirs[name])}", "model's shape"
            else:
                whose, keeps = f"tokenizer is {saved.tokenizer_kind}", "tokenizer"
                whose += "" if name == "tokenizer" else f" with {name} {theirs[name]}"
            raise OptionError(
                name,
                f"{_shown(ours[name])} contradicts --init-from {self.path}, whose {whose}: "
                f"a run started from another keeps its {keeps}; leave the option out",
            )
        for name in TOKENIZER_FROM_RUN:
            options[name] = theirs[name]
        fixed = {name: getattr(shape if name in given else saved.model, name) for name in REGULARISERS}
        return ModelShape(**{**{name: theirs[name] for name in SHAPE_FROM_RUN}, **fixed})

    def tokenizer(self) -> Tokenizer:
        """RUN's tokenizer, checked to be the one it had when the run was planned."""
        tokenizer = _quoted(lambda: RunDirectory(self.path).load_tokenizer(self.config))
        if fingerprint(tokenizer) != self.tokenizer_fingerprint:
            raise CharlmError(f"--init-from {self.path}: its tokenizer changed while this run was being set up")
        return tokenizer

    def read_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The checkpoint's weights for `model` (laid out as RUN's), checked as a resume
        checks its own, and refused if RUN has checkpointed again since it was planned."""
        run = RunDirectory(self.path)
        if _quoted(lambda: run.checkpoint_metadata(self.checkpoint)).get("step") != self.step:
            raise CharlmError(
                f"--init-from {self.path}: its {self.checkpoint} checkpoint changed while this run was being set up "
                "(is it still training?); start this run again"
            )
        return _quoted(lambda: run.read_weights(self.checkpoint, model))


def open_init_source(given_path: str) -> InitSource:
    """RUN checked before any work: a charlm run, a language model, with a checkpoint whose
    tensors match its config.json, and its tokenizer."""
    path = Path(given_path).expanduser().resolve()
    fix = "give the folder of a trained charlm language-model run"
    if not path.is_dir():
        raise CharlmError(
            f"--init-from {given_path}: {'no such folder' if not path.exists() else 'not a folder'}; {fix}"
        )
    if not (path / CONFIG_FILE).is_file():
        raise CharlmError(f"--init-from {given_path} is not a charlm run (no {CONFIG_FILE}); {fix}")
    data = _quoted(lambda: read_json(path / CONFIG_FILE, CONFIG_LIMIT, fix))
    task = data.get("task", LANGUAGE_MODEL) if isinstance(data, dict) else LANGUAGE_MODEL
    if task != LANGUAGE_MODEL:
        raise CharlmError(f"--init-from {given_path} is a {task!r} run, not a language model; {fix}")
    run = RunDirectory(path)
    config = _quoted(run.read_config)
    which = BEST if run.checkpoint_dir(BEST) is not None else LAST if run.checkpoint_dir(LAST) is not None else None
    if which is None:
        raise CharlmError(
            f"--init-from {given_path} has no checkpoint yet (it stopped before saving one); "
            "train it until it checkpoints, or give another run"
        )
    _quoted(lambda: checkpoints.check_weights_file(run.checkpoint_dir(which) / WEIGHTS_FILE, config))
    step = _quoted(lambda: run.checkpoint_metadata(which)).get("step")
    tokenizer = _quoted(lambda: run.load_tokenizer(config))
    return InitSource(path, which, step if isinstance(step, int) else None, config, fingerprint(tokenizer))


def unseen_note(corpus: PreparedCorpus, source: InitSource) -> Optional[str]:
    """The note on the characters of the new text that RUN's tokenizer never saw, or None."""
    unknown = sum(corpus.unknown.values())
    if not unknown:
        return None
    share = unknown / max(sum(corpus.chars.values()), 1)
    share_text = f"{share:.1%}" if share >= 0.001 else "under 0.1%"
    examples = ", ".join(f"{char!r} ×{count:,}" for char, count in list(corpus.unknown_chars.items())[:EXAMPLES])
    such = f", e.g. {examples}" if examples else ""
    return f"the new text has {unknown:,} characters ({share_text}) that {source.path} never saw{such}; they are read as unknown"


def shared_tokenizer(world: World, load: Callable[[], Tokenizer]) -> Tokenizer:
    """load() on rank 0 (only it reads run folders), sent to every process as the files it
    saves to, which load_tokenizer reads back: a tokenizer object need not pickle."""
    if not world.distributed:
        return load()
    tokenizer, files = None, None
    if world.is_main:
        tokenizer = load()
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save(Path(folder))
            files = {path.name: path.read_bytes() for path in Path(folder).iterdir()}
    files = distributed.broadcast(world, files)
    if tokenizer is not None:
        return tokenizer
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return load_tokenizer(folder)


def _shown(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _quoted(read):
    """read(), with a CharlmError about RUN marked as coming from --init-from."""
    try:
        return read()
    except CharlmError as exc:
        raise CharlmError(f"--init-from: {exc}") from None
