"""Plan and start a classifier training run: from its options to a ClassifierTrainer ready to run.

What `charlm classify train` does between parsing its options and training, as a few calls
a caller can report between:

    run = ClassifierRun.start(train_options, classify_options, shape_options, given, out=Path("runs/cls"))
    data = run.prepare_data()        # read, deduplicate, split, fit or take the tokenizer, encode
    run_dir = run.open_run_directory()
    trainer = run.trainer(on_event=print)
    trainer.run(); trainer.close()

The data is read by charlm.text.labelled (every format it knows, split stratified and
seeded, with duplicates kept inside one split); the tokenizer is fitted on the training
texts, or taken from the language model a --from-lm run starts from, whose cell, layers
and widths the classifier then takes too (giving another is refused). A new run validates
once an epoch (at most every 500 steps) unless --eval-every is given. A resume reads
everything back from the run's config.json and changes only what a resume may change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from charlm import __version__
from charlm.classifier_config import ClassifierConfig, ClassifyConfig
from charlm.config import RunConfig, TrainConfig
from charlm.errors import CharlmError
from charlm.hardware import resolve_device, resolve_precision, set_threads
from charlm.inference.classifying import EncodedTexts, encode_texts
from charlm.runs.create import check_out_writable, create_run_directory
from charlm.runs.directory import RunDirectory
from charlm.runs.open import wrong_task
from charlm.tasks.classification import ClassifierTrainer
from charlm.text.labelled import LabelledSplits, read_labelled, split_labelled
from charlm.text.tokenizer import Tokenizer, build_tokenizer, fingerprint, same_tokenizer
from charlm.training import distributed
from charlm.training.distributed import SINGLE, World
from charlm.training.faults import FaultPlan
from charlm.training.resume import apply_resume_options, check_not_finished

# the classifier's shape options; with --from-lm the first four come from the language model
SHAPE_FIELDS = ("cell", "layers", "hidden", "embed", "dropout", "bidirectional", "pooling")
FROM_LM_FIELDS = ("cell", "layers", "hidden", "embed", "tokenizer", "vocab_size", "spm_model_type")
MAX_EVAL_EVERY = 500


@dataclass
class PreparedData:
    splits: LabelledSplits
    tokenizer: Tokenizer
    train: EncodedTexts
    val: EncodedTexts
    test: EncodedTexts
    notes: list[str] = field(default_factory=list)


class ClassifierRun:
    """One classifier run being set up, step by step (see the module docstring)."""

    def __init__(self, train: TrainConfig, options: ClassifyConfig, shape: dict[str, Any], given: set[str],
                 out: Optional[Path], resume: bool = False, overwrite: bool = False,
                 saved: Optional[RunConfig] = None, changed: Optional[dict] = None, world: World = SINGLE):  # fmt: skip
        self.train, self.options, self.shape, self.given = train, options, shape, given
        self.out, self.resume, self.overwrite, self.saved = out, resume, overwrite, saved
        self.changed = changed or {}
        self.world = world
        self.device = distributed.process_device(world, resolve_device(train.device))
        # auto on a CPU is fp32: bf16 autocast made a classifier's steps slower there (small
        # batches of short texts; bench/classify.py), unlike a language model's
        cpu_auto = train.precision == "auto" and self.device.type == "cpu"
        self.precision = "fp32" if cpu_auto else resolve_precision(train.precision, self.device)
        self.threads = set_threads(train.threads, processes_here=world.local_size)
        self.data: Optional[PreparedData] = None
        self.model: Optional[ClassifierConfig] = None
        self.run_dir: Optional[RunDirectory] = None
        self.lm_weights: Optional[dict[str, torch.Tensor]] = None
        self.lm: Optional[RunConfig] = None
        self.lm_tokenizer: Optional[Tokenizer] = None

    @classmethod
    def start(cls, train_options: dict[str, Any], classify_options: dict[str, Any], shape: dict[str, Any],
              given: set[str], out: Optional[Path] = None, resume: bool = False, overwrite: bool = False,
              world: World = SINGLE) -> "ClassifierRun":  # fmt: skip
        """Check the options and the run folder; reads no data yet."""
        given = set(given)
        if resume:
            if out is None:
                raise CharlmError("--resume needs --out, the classifier run to continue")
            if overwrite:
                raise CharlmError("--resume and --overwrite contradict each other; choose one")
            run_dir = RunDirectory(out)
            run_dir.prepare(resume=True)
            saved = run_dir.read_config()
            if not saved.is_classifier:
                raise CharlmError(f"--resume: {wrong_task(run_dir.path, saved.task)}; continue it with charlm train")
            changed = apply_resume_options(saved.train, train_options, given)
            return cls(saved.train, saved.classify, saved.model.to_dict(), given, out, True, False, saved, changed,
                       world)  # fmt: skip
        train_options = dict(train_options, auto_size=False)
        for name in ("data", "val_data", "test_data"):
            value = train_options.get(name)
            if value and Path(value).expanduser().exists():  # a resume finds it from anywhere
                train_options[name] = str(Path(value).expanduser().resolve())
        train = TrainConfig(**train_options)
        train.validate()
        options = ClassifyConfig(**classify_options)
        if options.from_lm and Path(options.from_lm).expanduser().exists():
            options.from_lm = str(Path(options.from_lm).expanduser().resolve())
        options.validate()
        if options.from_lm:
            contradicting = [name for name in FROM_LM_FIELDS if name in given]
            if contradicting:
                flag = "--" + contradicting[0].replace("_", "-")
                raise CharlmError(
                    f"{flag} cannot be given with --from-lm: the tokenizer, cell, layers and widths come from "
                    "the language model; leave it out"
                )
        if out is not None:
            RunDirectory(out).check(overwrite=overwrite)
        check_out_writable(out if out is not None else Path("runs"))
        return cls(train, options, dict(shape), given, out, False, overwrite, world=world)

    # ----- the data -------------------------------------------------------------------------
    def prepare_data(self) -> PreparedData:
        """Read and split the labelled data, fit (or take) the tokenizer, encode every split."""
        train, options = self.train, self.options
        errors = train.encoding_errors
        fields = (options.text_field, options.label_field, errors)
        main = read_labelled(train.data, *fields)
        # a separate validation or test file may hold one class; the split checks its labels against training's
        val = read_labelled(train.val_data, *fields, min_classes=1) if train.val_data else None
        test = read_labelled(train.test_data, *fields, min_classes=1) if train.test_data else None
        val_fraction = 0.0 if val is not None else train.val_fraction
        test_fraction = 0.0 if test is not None else train.test_fraction
        splits = split_labelled(main, val_fraction, test_fraction, train.seed, val=val, test=test)
        notes = list(main.notes) + list(splits.notes)
        if self.resume:
            labels = list(self.saved.model.labels)
            if splits.labels != labels:
                raise CharlmError(
                    f"the data now has the labels {', '.join(splits.labels)} but the run was trained on "
                    f"{', '.join(labels)}; restore the original --data or start a new run"
                )
            tokenizer = RunDirectory(self.out).load_tokenizer(self.saved)
        elif options.from_lm:
            tokenizer = self._open_language_model()
        else:
            tokenizer = build_tokenizer(train.tokenizer, splits.train.texts, train.vocab_size, train.spm_model_type,
                                        self.threads)  # fmt: skip
        labels = splits.labels
        keep = dict(max_length=options.max_length, keep=options.keep)
        encoded = [
            encode_texts(part.texts, tokenizer, part.labels, labels, **keep)
            for part in (splits.train, splits.val, splits.test)
        ]
        unknown = getattr(tokenizer, "unk_id", None)
        if unknown is not None and len(encoded[0].ids):
            unseen = int((encoded[0].ids == unknown).sum())
            if unseen:
                notes.append(
                    f"{unseen:,} characters of the training texts ({unseen / len(encoded[0].ids):.2%}) are unknown "
                    "to the language model's tokenizer and read as one unknown symbol"
                )
        self.data = PreparedData(splits, tokenizer, *encoded, notes=notes)
        return self.data

    def _open_language_model(self) -> Tokenizer:
        """Read the --from-lm run: its tokenizer, shape and weights (best, else last)."""
        path = Path(self.options.from_lm)
        lm_dir = RunDirectory(path)
        config = lm_dir.read_config()
        if config.is_classifier:
            raise CharlmError(f"--from-lm {path} is a classifier run; give a language-model run made by charlm train")
        tokenizer = lm_dir.load_tokenizer(config)
        model, which = lm_dir.load_model("auto", device="cpu", config=config)
        self.lm, self.lm_tokenizer, self.options.lm_checkpoint = config, tokenizer, which
        self.lm_weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        for name in ("cell", "layers", "hidden", "embed"):
            self.shape[name] = getattr(config.model, name)
        self.train.tokenizer = config.tokenizer_kind
        return tokenizer

    # ----- the run directory ------------------------------------------------------------------
    def open_run_directory(self) -> RunDirectory:
        data = self._data()
        if self.resume:
            self.model = self.saved.model
            run_dir = RunDirectory(self.out)
            if not same_tokenizer(run_dir.load_tokenizer(self.saved), data.tokenizer):
                raise CharlmError("the run's tokenizer.json changed since it was trained; restore it")
            self.run_dir = run_dir
            return run_dir
        self.model = ClassifierConfig(vocab_size=data.tokenizer.vocab_size, labels=list(data.splits.labels),
                                      **self.shape)  # fmt: skip
        self.model.validate()
        if "eval_every" not in self.given:
            per_epoch = max(1, len(data.train) // self.train.batch_size)
            self.train.eval_every = min(MAX_EVAL_EVERY, per_epoch)
        path = None
        if self.world.is_main:
            label = Path(str(self.train.data)).stem or "classifier"
            out = self.out or Path("runs") / f"{label}-classify-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = RunDirectory(out)
            extra: dict[str, Any] = {"data": self._data_summary()}
            config = RunConfig(model=self.model, train=self.train, tokenizer_kind=data.tokenizer.kind,
                               tokenizer_fingerprint=fingerprint(data.tokenizer), charlm_version=__version__,
                               extra=extra, task="classify", classify=self.options)  # fmt: skip
            create_run_directory(run_dir, self.overwrite, data.tokenizer, config)
            path = str(run_dir.path)
        self.run_dir = RunDirectory(distributed.broadcast(self.world, path))
        return self.run_dir

    def _data_summary(self) -> dict[str, Any]:
        data = self._data()
        return {
            "examples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "labels": {label: int((data.train.labels == i).sum()) for i, label in enumerate(data.splits.labels)},
        }

    def trainer(
        self,
        on_event: Optional[Callable[[dict[str, Any]], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        faults: Optional[FaultPlan] = None,
    ) -> ClassifierTrainer:
        if self.run_dir is None or self.model is None:
            raise CharlmError("ClassifierRun.trainer: call open_run_directory() first")
        data = self._data()
        trainer = ClassifierTrainer(self.model, self.train, self.options, data.train, data.val, self.run_dir,
                                    self.device, self.precision, lm_weights=None if self.resume else self.lm_weights,
                                    on_event=on_event, should_stop=should_stop, faults=faults,
                                    world=self.world)  # fmt: skip
        if not self.resume:
            return trainer
        try:
            trainer.resume(self.changed)
            if self.changed and self.world.is_main:
                self.saved.train = self.train
                self.run_dir.write_config(self.saved)
            check_not_finished(trainer.stop_reason())
        except BaseException:
            trainer.close()
            raise
        return trainer

    def _data(self) -> PreparedData:
        if self.data is None:
            raise CharlmError("ClassifierRun: call prepare_data() first")
        return self.data
