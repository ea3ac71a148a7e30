"""charlm train: the options of a language-model run, and the run itself."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from charlm import __version__
from charlm.cli.console import Console, TrainReporter
from charlm.cli.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
)
from charlm.cli.options import CONTEXT, naming_environment, was_given
from charlm.config import (
    CELLS,
    DEFAULT_MAX_TIME_S,
    DEVICES,
    DIVERGENCE_ACTIONS,
    ENCODING_ERRORS,
    MAX_SEED,
    PRECISIONS,
    SPM_MODEL_TYPES,
    TOKENIZERS,
    ModelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
)
from charlm.errors import CharlmError, first_line
from charlm.hardware import (
    check_precision_runs,
    resolve_device,
    resolve_precision,
    set_threads,
)
from charlm.inference.generate import Generator
from charlm.runs.directory import RunDirectory
from charlm.runs.open import open_run
from charlm.tasks.lanes import require_tokens
from charlm.text.corpora import DEFAULT_CORPUS, resolve_default_corpus
from charlm.text.corpus import prepare_corpus
from charlm.text.sources import TextSource
from charlm.text.tokenizer import fingerprint as tokenizer_fingerprint
from charlm.training import distributed
from charlm.training.faults import ENV_VAR as FAULTS_ENV_VAR
from charlm.training.faults import FaultPlan
from charlm.training.preflight import (
    check_out_writable,
    check_training_memory,
    create_run_directory,
)
from charlm.tasks.language_model import Trainer
from charlm.tasks.language_model import tokens_fingerprint as data_fingerprint

_T, _M = TrainConfig, ModelConfig  # option defaults live in the dataclasses

RESUMABLE_OPTIONS = {
    "max_steps", "max_time", "epochs", "eval_every", "checkpoint_every", "log_every",
    "sample_length", "device", "threads", "precision", "compile", "out", "resume",
    "lr", "grad_clip", "on_divergence", "spike_factor", "skip_limit", "max_rollbacks", "rollback_lr_factor",
}  # fmt: skip

_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class CadenceType(click.ParamType):
    """--checkpoint-every: N steps, or a time such as 90s, 10m, 2h; gives ("steps", N) or ("seconds", S)."""

    name = "N|TIME"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        try:
            if text[-1:] in _TIME_UNITS:
                seconds = float(text[:-1]) * _TIME_UNITS[text[-1]]
                if not (seconds > 0 and seconds < float("inf")):
                    raise ValueError
                return ("seconds", seconds)
            steps = int(text)
            if steps < 1:
                raise ValueError
            return ("steps", steps)
        except ValueError:
            self.fail(f"{value!r} is neither a number of steps (1 or more) nor a time like 90s, 10m or 2h", param, ctx)


CADENCE = CadenceType()
DEFAULT_CADENCE = (str(_T.checkpoint_every), f"{_T.checkpoint_seconds / 60:g}m")


def _apply_cadence(options: dict[str, Any]) -> None:
    """Turn the --checkpoint-every values into checkpoint_every (steps) and checkpoint_seconds."""
    steps = seconds = None
    for kind, amount in options.pop("checkpoint_every"):
        if kind == "steps":
            steps = amount
        else:
            seconds = amount
    options["checkpoint_every"], options["checkpoint_seconds"] = steps, seconds


class _StopFlag:
    """Ctrl-C once: finish the step, checkpoint, stop. Ctrl-C twice: stop at once.

    Under torchrun the workers run in sessions of their own: Ctrl-C reaches torchrun, which
    passes it on to each worker once (and kills them 30 seconds later)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._previous_term = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread (e.g. some test runners)
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            signal.signal(signal.SIGTERM, self._previous_term)

    def __call__(self) -> bool:
        return self.requested


@click.command(context_settings=CONTEXT, epilog="Every option can also be set in the environment as "
             "CHARLM_TRAIN_<OPTION>, e.g. CHARLM_TRAIN_MAX_STEPS=1000 or CHARLM_TRAIN_DEVICE=cpu.")
@click.option("--data", "-d", default=DEFAULT_CORPUS, metavar="PATH|NAME",
              help="Corpus: a text file, a folder of text files, or a named corpus (shakespeare, pystdlib). "
                   "The default downloads tiny Shakespeare once and falls back to pystdlib offline.")
@click.option("--val-data", metavar="PATH", help="Separate validation text (instead of --val-fraction).")
@click.option("--test-data", metavar="PATH", help="Separate test text (instead of --test-fraction).")
@click.option("--val-fraction", type=float, default=_T.val_fraction, help="Last fraction of the corpus kept for validation.")
@click.option("--test-fraction", type=float, default=_T.test_fraction, help="Fraction after validation kept for testing.")
@click.option("--out", "-o", type=click.Path(path_type=Path), metavar="DIR",
              help="Run directory. Default: runs/<corpus>-<date>-<time>.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.option("--tokenizer", type=click.Choice(TOKENIZERS), default=_T.tokenizer, help="How text becomes tokens.")
@click.option("--vocab-size", type=int, default=_T.vocab_size, help="SentencePiece vocabulary size (above 260).")
@click.option("--spm-model", "spm_model_type", type=click.Choice(SPM_MODEL_TYPES), default=_T.spm_model_type,
              help="SentencePiece model type.")
@click.option("--encoding-errors", type=click.Choice(ENCODING_ERRORS), default=_T.encoding_errors,
              help="What to do with bytes that are not UTF-8: stop with their position, or replace them with U+FFFD.")
@click.option("--cell", type=click.Choice(CELLS + ("rnn",)), default=_M.cell, help="Recurrent cell (rnn = rnn-tanh).")
@click.option("--layers", type=int, default=_M.layers, help="Stacked recurrent layers (L).")
@click.option("--hidden", type=int, default=_M.hidden, help="Hidden width (H).")
@click.option("--embed", type=int, default=_M.embed, help="Embedding width (E).")
@click.option("--dropout", type=float, default=_M.dropout, help="Dropout on embeddings, between layers and on the output.")
@click.option("--tie-weights/--no-tie-weights", default=_M.tie_weights, help="Share the embedding and output matrices.")
@click.option("--batch-size", "-b", type=int, default=_T.batch_size, help="Parallel lanes of the token stream (B).")
@click.option("--seq-len", "-t", type=int, default=_T.seq_len, help="Window length for truncated BPTT (T).")
@click.option("--random-offset/--no-random-offset", default=_T.random_offset, help="Move window boundaries each epoch.")
@click.option("--lr", type=float, default=_T.lr, help="Peak learning rate (AdamW).")
@click.option("--min-lr-ratio", type=float, default=_T.min_lr_ratio, help="Final learning rate as a fraction of the peak.")
@click.option("--warmup-steps", type=int, default=_T.warmup_steps, help="Linear warmup steps.")
@click.option("--weight-decay", type=float, default=_T.weight_decay, help="AdamW weight decay on weight matrices.")
@click.option("--grad-clip", type=float, default=_T.grad_clip, help="Clip the gradient norm to this (0: off).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=_T.precision,
              help="auto: bf16 where the hardware has it (CUDA from Ampere on, or a CPU with AVX512-BF16/AMX), "
                   "else fp16 with a GradScaler on a GPU and fp32 on a CPU.")
@click.option("--device", type=click.Choice(DEVICES), default=_T.device, help="auto picks CUDA when present.")
@click.option("--threads", type=int,
              help="CPU threads per process. Default: one per available core, shared among the processes "
                   "torchrun starts on this machine (torchrun's own default is 1).")
@click.option("--compile/--no-compile", default=_T.compile,
              help="Compile the training step with torch.compile: a slower start, then faster steps, mostly on GPUs.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED - 1), default=_T.seed, help="Random seed.")
@click.option("--max-steps", type=int, help="Stop after this many steps.")
@click.option("--max-time", type=float,
              help=f"Stop after this many seconds of training. With no stop option: {DEFAULT_MAX_TIME_S:g}.")
@click.option("--epochs", type=float, help="Stop after this many passes over the training split.")
@click.option("--eval-every", type=int, default=_T.eval_every, help="Validate (and checkpoint) every N steps.")
@click.option("--eval-batch-size", type=int, default=_T.eval_batch_size, help="Lanes used for validation.")
@click.option("--checkpoint-every", type=CADENCE, multiple=True, default=DEFAULT_CADENCE, metavar="N|TIME",
              help="Also checkpoint every N steps and/or every TIME (e.g. 90s, 10m, 2h); repeat to give both. "
                   "Given values replace both defaults.")
@click.option("--on-divergence", type=click.Choice(DIVERGENCE_ACTIONS), default=_T.on_divergence,
              help="A step whose loss or gradient is NaN/inf, or whose loss spikes: skip its update (rolling back "
                   "to the last checkpoint after --skip-limit in a row), roll back at once, or stop.")
@click.option("--spike-factor", type=float, default=_T.spike_factor,
              help="A loss above this many times its recent average counts as a bad step (0: off).")
@click.option("--skip-limit", type=int, default=_T.skip_limit, help="Bad steps in a row that trigger a rollback.")
@click.option("--max-rollbacks", type=int, default=_T.max_rollbacks,
              help="Rollbacks in a row (no recovery between) before the run gives up.")
@click.option("--rollback-lr-factor", type=float, default=_T.rollback_lr_factor,
              help="Each rollback multiplies the learning rate by this.")
@click.option("--log-every", type=int, default=_T.log_every, help="Log training loss every N steps.")
@click.option("--sample-length", type=int, default=_T.sample_length, help="Tokens of sample text printed at the end (0: none).")
@click.pass_context
def train(ctx: click.Context, **options: Any) -> None:
    """Train a recurrent language model on a corpus; write a self-contained run directory.

    Under torchrun (torchrun --nproc_per_node=N -m charlm train ...) the N processes train
    one model with DistributedDataParallel, sharing the --batch-size lanes."""
    world = distributed.start()  # a no-op unless torchrun started this process
    where: dict[str, Path] = {}
    try:
        status = _train(ctx, world, Console(rank=world.rank if world.distributed else None), options, where)
    except Exception as exc:
        if not (world.distributed and distributed.is_lost_peer(exc)):
            raise
        if not world.is_main:
            sys.exit(EXIT_ERROR)  # rank 0 is gone, having said why, or it says so now
        then = f"; the last checkpoint is intact, continue with: {_resume_hint(world, where['run'])}" if "run" in where else ""
        raise CharlmError(
            f"lost contact with the other processes of this torchrun job ({first_line(exc)}); one of them stopped "
            f"first, and its own message, if it left one, is above{then}"
        ) from None
    # after an error, the process just exits (torchrun stops the others); a clean end waits
    # for every process before the group is taken down, or gloo may abort one of them
    distributed.stop(world)
    if status:
        sys.exit(status)


def _plan_run(ctx: click.Context, options: dict[str, Any], model_options: dict[str, Any]) -> dict[str, Any]:
    """Everything decided from the options and the run directory before the corpus is read:
    the configurations, what changed on a resume, the corpus to read. Under torchrun only
    rank 0 does this (only it reads the run directory) and sends the plan to the others."""
    out: Optional[Path] = options.pop("out")
    resume: bool = options.pop("resume")
    overwrite: bool = options.pop("overwrite")
    changed: dict[str, Any] = {}  # resumable options given new values: [old, new]
    run_config = model_config = None
    if resume:
        if out is None:
            raise CharlmError("--resume needs --out, the run directory to continue")
        if overwrite:
            raise CharlmError("--resume and --overwrite contradict each other; choose one")
        run_dir = RunDirectory(out)
        run_dir.prepare(resume=True)
        run_config = run_dir.read_config()
        fixed = sorted(name for name in list(options) + list(model_options)
                       if name not in RESUMABLE_OPTIONS and was_given(ctx, name))
        if fixed:
            names = ", ".join("--" + name.replace("_", "-") for name in fixed)
            raise CharlmError(f"{names} cannot change when resuming; only stop limits, cadence, hardware, --lr, --grad-clip and the divergence options can")
        train_config = run_config.train
        given = {name for name in RESUMABLE_OPTIONS & set(options) if was_given(ctx, name)}
        _apply_cadence(options)
        if "checkpoint_every" in given:
            given.add("checkpoint_seconds")
        for name in sorted(given):
            old = getattr(train_config, name)
            if old != options[name]:
                changed[name] = [old, options[name]]
            setattr(train_config, name, options[name])
        train_config.validate()
        model_config = run_config.model
    else:
        for name in ("data", "val_data", "test_data"):
            # absolute paths, so a resumed run finds its corpus from any working directory
            if options[name] and Path(options[name]).expanduser().exists():
                options[name] = str(Path(options[name]).expanduser().resolve())
        _apply_cadence(options)
        train_config = TrainConfig(**options)
        with naming_environment(ctx):
            train_config.validate()
            ModelConfig(vocab_size=2, **model_options).validate()
        if out is not None:  # fail before a long corpus preparation
            RunDirectory(out).check(overwrite=overwrite)
        check_out_writable(out if out is not None else Path("runs"))
    distributed.check_lane_share(train_config.batch_size, distributed.launched_world()[2])
    main_source = None
    if not resume and not was_given(ctx, "data"):
        label, files, notes = resolve_default_corpus()
        main_source = TextSource(label=label, files=files, notes=notes)
        train_config.data = label
    return {"train": train_config, "model": model_config, "run": run_config, "changed": changed, "out": out,
            "resume": resume, "overwrite": overwrite, "main_source": main_source}


def _train(
    ctx: click.Context, world: distributed.World, console: Console, options: dict[str, Any], where: dict[str, Path]
) -> int:
    """Returns the exit status; raises on errors. Records the run directory in `where`."""
    model_options = {name: options.pop(name) for name in ("cell", "layers", "hidden", "embed", "dropout", "tie_weights")}
    plan = distributed.broadcast(world, _plan_run(ctx, options, model_options) if world.is_main else None)
    train_config: TrainConfig = plan["train"]
    resume, changed = plan["resume"], plan["changed"]
    if resume:
        model_config: ModelConfig = plan["model"]
        model_options = {name: getattr(model_config, name) for name in model_options}

    with naming_environment(ctx):
        device = distributed.process_device(world, resolve_device(train_config.device))
        precision = resolve_precision(train_config.precision, device)
        check_precision_runs(model_options["cell"], device, precision)
        threads = set_threads(train_config.threads, processes_here=world.local_size)
    check_training_memory(model_options, train_config, device, precision, processes=world.size)

    # rank 0 prepares the corpus first; the others then find it in the cache (when the
    # machines share a file system) or prepare their own, which must come out the same
    if not world.is_main:
        distributed.barrier(world)
    started = time.perf_counter()
    corpus = prepare_corpus(
        train_config.data,
        val_data=train_config.val_data,
        test_data=train_config.test_data,
        val_fraction=train_config.val_fraction,
        test_fraction=train_config.test_fraction,
        tokenizer=train_config.tokenizer,
        vocab_size=train_config.vocab_size,
        spm_model_type=train_config.spm_model_type,
        encoding_errors=train_config.encoding_errors,
        threads=threads,
        main_source=plan["main_source"],
        on_stage=console.note,
    )
    if world.is_main:
        distributed.barrier(world)
    for note in corpus.notes:
        console.warn(note)
    how = "cached" if corpus.from_cache else f"prepared in {time.perf_counter() - started:.1f}s"
    console.note(
        f"corpus {corpus.label}: {corpus.tokenizer.kind} tokenizer, vocabulary {corpus.tokenizer.vocab_size:,}; "
        f"{how} ({corpus.cache_dir})"
    )
    _check_same_corpus_everywhere(world, corpus)

    require_tokens(len(corpus.splits["train"]), train_config.batch_size, train_config.seq_len)
    out = plan["out"]
    if not resume:
        model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **model_options)
        model_config.validate()
        check_training_memory(model_options, train_config, device, precision, corpus.tokenizer.vocab_size, world.size)
    if world.is_main:
        if resume:
            run_dir = RunDirectory(out)
            _check_same_tokenizer(run_dir, corpus)
        else:
            if out is None:
                out = Path("runs") / f"{corpus.label}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = RunDirectory(out)
            create_run_directory(
                run_dir, plan["overwrite"], corpus.tokenizer,
                RunConfig(model=model_config, train=train_config, tokenizer_kind=corpus.tokenizer.kind,
                          tokenizer_fingerprint=tokenizer_fingerprint(corpus.tokenizer), charlm_version=__version__),
            )
    run_dir = RunDirectory(distributed.broadcast(world, str(run_dir.path) if world.is_main else None))
    where["run"] = run_dir.path
    console.info(f"run directory: {run_dir.path}")

    faults = FaultPlan(os.environ.get(FAULTS_ENV_VAR))
    if faults:
        console.warn(f"{FAULTS_ENV_VAR} is set: this run fails on purpose ({os.environ[FAULTS_ENV_VAR]})")
    reporter = TrainReporter(console)
    with _StopFlag() as stop, reporter:
        trainer = Trainer(model_config, train_config, corpus, run_dir, device, precision,
                          on_event=reporter if world.is_main else None, should_stop=stop, faults=faults, world=world)
        if resume:
            trainer.resume(changed)
            if changed and world.is_main:  # the new limits, cadence and steering hold for later resumes too
                run_config = plan["run"]
                run_config.train = train_config
                run_dir.write_config(run_config)
            done = trainer.stop_reason()
            if done in ("max_steps", "max_time", "epochs"):
                option = "--" + done.replace("_", "-")
                raise CharlmError(f"the run already reached its {option} limit; give a larger {option} to continue")
        result = trainer.run()
        trainer.close()

    if result.reason == "interrupted":
        console.info(f"checkpoint saved; continue with: {_resume_hint(world, run_dir.path)}")
        return EXIT_INTERRUPTED
    if train_config.sample_length > 0 and world.is_main:
        opened = open_run(run_dir.path, "auto", device)
        console.heading(f"sample from the {opened.checkpoint} checkpoint:")
        generator = Generator(opened.model, opened.tokenizer, device)
        sample = generator.generate("", train_config.sample_length, config=SampleConfig(), seed=train_config.seed)
        for _, text in sample:
            console.write_text(text)
        console.write_text("\n")
    return 0


def _resume_hint(world: distributed.World, run: Path) -> str:
    command = f"charlm train --out {run} --resume"
    if world.distributed:
        return f"torchrun ... -m {command} (any number of processes)"
    return command


def _check_same_corpus_everywhere(world: distributed.World, corpus) -> None:
    """Under torchrun, refuse to train when the processes read different token streams
    (a corpus that differs between machines, a SentencePiece model trained apart)."""
    if not world.distributed:
        return
    mine = (tokenizer_fingerprint(corpus.tokenizer), int(len(corpus.splits["train"])), data_fingerprint(corpus.splits["train"]))
    everyone = distributed.gather(world, mine)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            raise CharlmError(
                f"the process of rank {rank} prepared a different corpus or tokenizer than rank 0; every machine "
                "needs the same --data (a shared file system, or identical copies at the same path)"
            )


def _check_same_tokenizer(run_dir: RunDirectory, corpus) -> None:
    saved = run_dir.load_tokenizer()
    if saved.vocab_size != corpus.tokenizer.vocab_size or saved.token_bytes() != corpus.tokenizer.token_bytes():
        raise CharlmError(
            "the corpus now gives a different vocabulary than the run was trained with; "
            "restore the original --data or start a new run"
        )


