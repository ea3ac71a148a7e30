"""Plan and start a language-model training run: from its options to a Trainer ready to run.

What `charlm train` does between parsing its options and training, as a few calls a caller
can report between:

    run = LanguageModelRun.start({"data": "notes.txt", "max_steps": 500}, ModelShape(hidden=128),
                                 given={"data", "max_steps", "hidden"}, out=Path("runs/notes"))
    corpus = run.prepare_corpus(on_stage=print)   # read, split, tokenize (or from the cache)
    choice = run.size_model()                     # what the budget rule chose (None: nothing to choose)
    run_dir = run.open_run_directory()            # a new run's folder, or the resumed one checked
    trainer = run.trainer(on_event=print)         # resumed where it stopped, when resuming
    trainer.run(); trainer.close()

A new run with auto_size on (the default) has the shape, batch and learning rate it was not
given chosen for its budget (sizing.py, after a short probe of this machine, probe.py); the
probe's seconds count in a time budget, and the choice is kept in config.json, so a resume
never decides again. A run started from another (`init_from`, init_from.py) has that run's
shape and tokenizer, so the rule chooses at most its batch and learning rate. Whatever can be
refused is refused as early as it can be told: the options, the run folder and the run to start
from before the corpus is read, and a model that cannot fit in memory before anything is
allocated (with the run's own vocabulary on a resume, else the smallest the tokenizer can
give, and again once the tokenizer is fitted). Under torchrun only rank 0 reads or creates
the run folder and sends its plan to the others; rank 0 prepares the corpus first, so the
others find it in the cache, and every process must come out with the same tokens.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from charlm import __version__
from charlm.config import ModelConfig, ModelShape, RunConfig, TrainConfig
from charlm.errors import CharlmError
from charlm.hardware import resolve_device, resolve_precision, set_threads
from charlm.runs.create import check_out_writable, create_run_directory
from charlm.runs.directory import RunDirectory
from charlm.tasks.init_from import TOKENIZER_FROM_RUN, InitSource, open_init_source, shared_tokenizer, unseen_note
from charlm.tasks.lanes import require_tokens
from charlm.tasks.language_model import Trainer, tokens_fingerprint
from charlm.tasks.probe import SECONDS_PER_CANDIDATE, ThroughputProbe
from charlm.tasks.sizing import SHAPE_DECISIONS, TRAIN_DECISIONS, Limits, SizeChoice, choose_size
from charlm.text.corpora import resolve_default_corpus
from charlm.text.corpus import PreparedCorpus, prepare_corpus_for
from charlm.text.sources import TextSource
from charlm.text.tokenizer import Tokenizer, fingerprint, same_tokenizer
from charlm.training import distributed
from charlm.training.distributed import SINGLE, World
from charlm.training.faults import FaultPlan
from charlm.training.preflight import check_precision_runs, check_training_memory
from charlm.training.resume import apply_resume_options, check_not_finished

# Options the call itself takes, never part of `given`.
_RUN_OPTIONS = frozenset({"out", "resume", "overwrite"})
# above this share of validation characters unseen in training, a new run trains on bytes
MAX_UNSEEN_SHARE = 0.01


@dataclass
class RunPlan:
    """What is decided from the options and the run folder before the corpus is read."""

    train: TrainConfig
    shape: ModelShape
    out: Optional[Path]
    resume: bool = False
    overwrite: bool = False
    saved: Optional[RunConfig] = None  # the run's config.json, on a resume
    changed: dict[str, list] = field(default_factory=dict)  # resumed options given new values: [old, new]
    main_source: Optional[TextSource] = None  # the default corpus, resolved
    given: frozenset = frozenset()  # the options the user set (and those init_from fixes)
    init: Optional[InitSource] = None  # the run a new run starts from


def plan_run(
    options: dict[str, Any],
    shape: ModelShape,
    given: Iterable[str] = (),
    out: Optional[Path] = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunPlan:
    """Check the options and the run folder and decide the run; reads no corpus.

    options: TrainConfig's fields (those left out keep their defaults); given: the names of
    the options the user set. On a resume only resumable ones may be given, and they are
    applied to the saved config; a new run with no `data` given trains on the default
    corpus (downloaded once, with an offline fallback)."""
    given = set(given) - _RUN_OPTIONS
    saved, changed, main_source, init = None, {}, None, None
    if resume:
        if options.get("init_from") or "init_from" in given:
            raise CharlmError(
                "--init-from and --resume contradict each other: a resumed run continues from its own checkpoint; "
                "leave --init-from out"
            )
        if out is None:
            raise CharlmError("--resume needs --out, the run directory to continue")
        if overwrite:
            raise CharlmError("--resume and --overwrite contradict each other; choose one")
        run_dir = RunDirectory(out)
        run_dir.prepare(resume=True)
        saved = run_dir.read_config()
        train = saved.train
        changed = apply_resume_options(train, options, given)
        shape = saved.model.shape
    else:
        options = dict(options)
        for name in ("data", "val_data", "test_data"):
            # absolute paths, so a resumed run finds its corpus from any working directory
            if options.get(name) and Path(options[name]).expanduser().exists():
                options[name] = str(Path(options[name]).expanduser().resolve())
        if options.get("init_from"):
            init = open_init_source(options["init_from"])
            options["init_from"] = str(init.path)
            shape = init.fix(shape, options, given)
            given |= set(SHAPE_DECISIONS) | set(TOKENIZER_FROM_RUN)  # RUN's, which the budget rule keeps
            if out is not None and Path(out).expanduser().resolve() == init.path:
                raise CharlmError("--out is the --init-from run itself; give the new run a folder of its own")
        train = TrainConfig(**options)
        train.validate()
        shape.validate()
        if out is not None:  # fail before a long corpus preparation
            RunDirectory(out).check(overwrite=overwrite)
        check_out_writable(out if out is not None else Path("runs"))
    distributed.check_lane_share(train.batch_size, distributed.launched_world()[2])
    if not resume and "data" not in given:
        label, files, notes = resolve_default_corpus()
        main_source = TextSource(label=label, files=files, notes=notes)
        train.data = label
    return RunPlan(train, shape, out, resume, overwrite, saved, changed, main_source, frozenset(given), init)


class LanguageModelRun:
    """One training run being set up, step by step (see the module docstring)."""

    def __init__(self, plan: RunPlan, world: World = SINGLE):
        """Choose the device, precision and threads, and refuse a model that cannot fit."""
        self.plan, self.world = plan, world
        self.train, self.resume, self.changed = plan.train, plan.resume, plan.changed
        self.device: torch.device = distributed.process_device(world, resolve_device(self.train.device))
        self.precision: str = resolve_precision(self.train.precision, self.device)
        check_precision_runs(plan.shape.cell, self.device, self.precision)
        self.threads: int = set_threads(self.train.threads, processes_here=world.local_size)
        known = plan.saved.model.vocab_size if plan.saved is not None else None
        if plan.init is not None:
            known = plan.init.config.model.vocab_size
        check_training_memory(plan.shape, self.train, self.device, self.precision, known, world.size)
        self.corpus: Optional[PreparedCorpus] = None
        self.prepare_seconds = 0.0
        self.model: Optional[ModelConfig] = None
        self.run_dir: Optional[RunDirectory] = None
        self.choice: Optional[SizeChoice] = None
        self._sized = False

    @classmethod
    def start(cls, *request: Any, world: World = SINGLE, **named: Any) -> "LanguageModelRun":
        """plan_run(*request, **named) on rank 0 (only it reads the run folder), its plan
        sent to every process."""
        plan = plan_run(*request, **named) if world.is_main else None
        return cls(distributed.broadcast(world, plan), world)

    def prepare_corpus(self, on_stage: Optional[Callable[[str], None]] = None) -> PreparedCorpus:
        """Read, split and tokenize the corpus, or find it in the token cache."""
        # rank 0 prepares it first; the others then find it in the cache (when the machines
        # share a file system) or prepare their own, which must come out the same
        started = time.perf_counter()
        tokenizer = self._fixed_tokenizer()
        if not self.world.is_main:
            distributed.barrier(self.world)
        self.corpus = prepare_corpus_for(self.train, self.threads, self.plan.main_source, on_stage, tokenizer)
        note = unseen_note(self.corpus, self.plan.init) if self.plan.init is not None else None
        if note:
            self.corpus.notes.append(note)
        unseen = self._unseen_share(self.corpus)
        if unseen > MAX_UNSEEN_SHARE:
            # a character model cannot score what it never saw; bytes spell every character
            self.train.tokenizer = "byte"
            self.corpus = prepare_corpus_for(self.train, self.threads, self.plan.main_source, on_stage)
            self.corpus.notes.append(
                f"{unseen:.1%} of the validation characters never occur in the training split, which a character "
                "model cannot predict; training on UTF-8 bytes instead (--tokenizer char keeps characters)"
            )
        if self.world.is_main:
            distributed.barrier(self.world)
        self.prepare_seconds = time.perf_counter() - started
        return self.corpus

    def size_model(self) -> Optional[SizeChoice]:
        """Choose what the user left open of the shape, batch and learning rate for the
        budget (sizing.py), probing this machine when time limits the run; None when there
        is nothing to choose (a resume, auto_size off, or every such option given)."""
        if self._sized:
            return self.choice
        self._sized = True
        plan, train, corpus = self.plan, self.train, self._corpus()
        free = [name for name in SHAPE_DECISIONS + TRAIN_DECISIONS if name not in plan.given]
        if self.resume or not train.auto_size or not free:
            return None
        vocab_size = corpus.tokenizer.vocab_size
        limits = Limits.of(train, len(corpus.splits["train"]))
        probe = None
        if limits.seconds is not None:
            processes = self.world.size

            def fits(shape: ModelShape, batch: int) -> bool:
                try:
                    check_training_memory(shape, dataclasses.replace(train, batch_size=batch), self.device,
                                          self.precision, vocab_size, processes)  # fmt: skip
                    return True
                except CharlmError:
                    return False

            # a short budget gets a shorter probe: each candidate is timed for 0.4% of it (0.1 to 0.6 s)
            timing = min(SECONDS_PER_CANDIDATE, max(0.1, 0.004 * limits.seconds))
            probe = ThroughputProbe(corpus.splits["train"], vocab_size, train, self.device, self.precision,
                                    seconds_per_candidate=timing, fits=fits)  # fmt: skip
        choice = None
        if self.world.is_main or probe is not None:  # every process probes, sharing the machine as in training
            choice = choose_size(plan.shape, train, set(plan.given), limits, vocab_size, probe,
                                 on_gpu=self.device.type == "cuda",
                                 lane_ok=lambda batch: batch % self.world.size == 0)  # fmt: skip
            if probe is not None:
                choice.measured, choice.probe_seconds = dict(probe.measured), probe.seconds
        choice = distributed.broadcast(self.world, choice if self.world.is_main else None)
        plan.shape = choice.shape
        train.batch_size, train.lr, train.warmup_steps = choice.batch_size, choice.lr, choice.warmup_steps
        self.choice = choice
        return choice

    def _fixed_tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer a run started from another encodes with (None: fit one): that run's
        for a new run, the run's own copy on a resume."""
        if self.plan.init is not None:
            return shared_tokenizer(self.world, self.plan.init.tokenizer)
        if self.resume and self.train.init_from:
            return shared_tokenizer(self.world, lambda: RunDirectory(self.plan.out).load_tokenizer(self.plan.saved))
        return None

    def _unseen_share(self, corpus: PreparedCorpus) -> float:
        """The share of validation characters the character tokenizer had to call unknown,
        when the budget rule may choose the tokenizer (else 0)."""
        train, given = self.train, self.plan.given
        if self.resume or not train.auto_size or "tokenizer" in given or corpus.tokenizer.kind != "char":
            return 0.0
        return corpus.unknown.get("val", 0) / max(corpus.chars.get("val", 0), 1)

    def open_run_directory(self) -> RunDirectory:
        """Create a new run's folder (tokenizer and config), or check the resumed run's
        tokenizer against the corpus; the model's configuration is then settled."""
        self.size_model()
        corpus, train, world = self._corpus(), self.train, self.world
        check_same_corpus_everywhere(world, corpus)
        require_tokens(len(corpus.splits["train"]), train.batch_size, train.seq_len)
        vocab_size = corpus.tokenizer.vocab_size
        if self.resume:
            self.model = self.plan.saved.model
        else:
            self.model = self.plan.shape.with_vocabulary(vocab_size)
            self.model.validate()
            check_training_memory(self.plan.shape, train, self.device, self.precision, vocab_size, world.size)
        path = None
        if world.is_main:
            if self.resume:
                run_dir = RunDirectory(self.plan.out)
                check_same_tokenizer(run_dir, corpus)
            else:
                out = self.plan.out or Path("runs") / f"{corpus.label}-{time.strftime('%Y%m%d-%H%M%S')}"
                run_dir = RunDirectory(out)
                config = RunConfig(
                    model=self.model,
                    train=train,
                    tokenizer_kind=corpus.tokenizer.kind,
                    tokenizer_fingerprint=fingerprint(corpus.tokenizer),
                    charlm_version=__version__,
                    extra={
                        **({"budget": self.choice.to_dict()} if self.choice is not None else {}),
                        **({"init_from": self.plan.init.to_dict()} if self.plan.init is not None else {}),
                    },
                )
                create_run_directory(run_dir, self.plan.overwrite, corpus.tokenizer, config)
            path = str(run_dir.path)
        self.run_dir = RunDirectory(distributed.broadcast(world, path))
        return self.run_dir

    def trainer(
        self,
        on_event: Optional[Callable[[dict[str, Any]], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        faults: Optional[FaultPlan] = None,
    ) -> Trainer:
        """The Trainer for this run; a resumed one continues from its last checkpoint, and
        the options that changed are kept in config.json for later resumes too."""
        if self.run_dir is None or self.model is None:
            raise CharlmError("LanguageModelRun.trainer: call open_run_directory() first")
        spent = self.choice.probe_seconds if self.choice is not None and not self.resume else 0.0
        trainer = Trainer(self.model, self.train, self._corpus(), self.run_dir, self.device, self.precision,
                          on_event=on_event, should_stop=should_stop, faults=faults, world=self.world,
                          spent_before=spent, init_from=None if self.resume else self.plan.init)  # fmt: skip
        if not self.resume:
            return trainer
        try:
            trainer.resume(self.changed)
            if self.changed and self.world.is_main:  # the new limits, cadence and steering hold later too
                saved = self.plan.saved
                saved.train = self.train
                self.run_dir.write_config(saved)
            check_not_finished(trainer.stop_reason())
        except BaseException:
            trainer.close()
            raise
        return trainer

    def _corpus(self) -> PreparedCorpus:
        if self.corpus is None:
            raise CharlmError("LanguageModelRun: call prepare_corpus() first")
        return self.corpus


def check_same_corpus_everywhere(world: World, corpus: PreparedCorpus) -> None:
    """Under torchrun, refuse to train when the processes read different token streams
    (a corpus that differs between machines, a SentencePiece model trained apart)."""
    if not world.distributed:
        return
    train = corpus.splits["train"]
    mine = (fingerprint(corpus.tokenizer), int(len(train)), tokens_fingerprint(train))
    everyone = distributed.gather(world, mine)
    for rank, theirs in enumerate(everyone):
        if not same_tokenizer(theirs[0], everyone[0][0]) or theirs[1:] != everyone[0][1:]:
            raise CharlmError(
                f"the process of rank {rank} prepared a different corpus or tokenizer than rank 0; every machine "
                "needs the same --data (a shared file system, or identical copies at the same path)"
            )


def check_same_tokenizer(run_dir: RunDirectory, corpus: PreparedCorpus) -> None:
    """On a resume, refuse a corpus whose tokenizer now reads ids differently than the run's."""
    if not same_tokenizer(run_dir.load_tokenizer(), corpus.tokenizer):
        raise CharlmError(
            "the corpus now gives a different vocabulary than the run was trained with; "
            "restore the original --data or start a new run"
        )
