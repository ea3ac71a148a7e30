"""The command line: a click group whose commands map options onto the config dataclasses.

Every user mistake ends the same way: one line on stderr ("charlm: error: ..."), a non-zero
exit, no traceback. Options can also come from the environment as CHARLM_<COMMAND>_<OPTION>
(e.g. CHARLM_TRAIN_DEVICE=cpu), which --help names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Optional

import click
import torch

from . import __version__, distributed
from .batching import require_tokens
from .checkpoint import RunDirectory
from .config import (
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
from .console import Console, TrainReporter, print_line_scores, print_score
from .corpora import DEFAULT_CORPUS, resolve_default_corpus
from .corpus import TextSource, newline_chunks, prepare_corpus, resolve_source
from .errors import CharlmError, first_line
from .evaluate import DEFAULT_LANES, DEFAULT_WINDOW, Scorer
from .faults import ENV_VAR as FAULTS_ENV_VAR
from .faults import FaultPlan
from .generate import MAX_SAMPLES, MAX_TOKENS, Generator, check_counts
from .hardware import check_precision_runs, resolve_device, resolve_precision, set_threads
from .preflight import check_out_writable, check_training_memory, create_run_directory
from .tokenizer import fingerprint as tokenizer_fingerprint
from .trainer import Trainer
from .trainer import fingerprint as data_fingerprint

_T, _M = TrainConfig, ModelConfig  # option defaults live in the dataclasses

# The group sets the prefix; each command then reads CHARLM_<COMMAND>_<OPTION>.
GROUP_CONTEXT = dict(help_option_names=["-h", "--help"], auto_envvar_prefix="CHARLM")
CONTEXT = dict(help_option_names=["-h", "--help"], show_default=True)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MAX_PROMPT_BYTES = 16 << 20  # --prompt-file; the prompt is primed in windows, but held whole
MAX_STDIN_BYTES = 1 << 30  # perplexity --data -: so an endless pipe (< /dev/zero) ends with an error


class CharlmGroup(click.Group):
    """A click group that reports every user error as one line and an exit status."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        rank = _torchrun_rank()
        console = Console(rank=rank)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            if rank:  # the same mistake on every process: rank 0 reports it
                sys.exit(exc.exit_code)
            hint = ""
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                hint = f" (see '{ctx.command_path} --help')"
                param = getattr(exc, "param", None)
                envvar = _envvar_of(ctx, getattr(param, "name", None)) if param is not None else None
                if envvar:
                    hint = f" (set by the environment variable {envvar})" + hint
            console.error(exc.format_message().replace("\n", " ") + hint)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            console.error("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except CharlmError as exc:
            console.error(str(exc))
            sys.exit(EXIT_ERROR)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            console.error(f"{exc.strerror or exc}{where}")
            sys.exit(EXIT_ERROR)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else 0)
        return result


def _torchrun_rank() -> Optional[int]:
    """This process's rank when torchrun started it, else None."""
    try:
        rank, _, size, _ = distributed.launched_world()
    except CharlmError:
        return None
    return rank if size > 1 else None


def _one_process_only(command: str) -> None:
    """Under torchrun, refuse a command that is not distributed: once, from rank 0."""
    rank = _torchrun_rank()
    if rank is None:
        return
    if rank:
        sys.exit(EXIT_ERROR)
    raise CharlmError(f"charlm {command} runs in one process; start it without torchrun (only train is distributed)")


@click.group(cls=CharlmGroup, context_settings=GROUP_CONTEXT, no_args_is_help=True)
@click.version_option(__version__, "-V", "--version", prog_name="charlm")
def cli() -> None:
    """charlm: train recurrent language models on any text, generate from them, score text."""


# Options that may change when a run is resumed: stop limits, cadence, hardware, and how the
# optimisation is steered (lr, clipping, the divergence guard). Everything that decides the
# model, the data or the batches is fixed by the run.
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


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def _envvar_of(ctx: click.Context, name: Optional[str]) -> Optional[str]:
    """The environment variable an option's value came from, if it came from one."""
    if not name or ctx.get_parameter_source(name) != click.core.ParameterSource.ENVIRONMENT:
        return None
    return f"{ctx.auto_envvar_prefix}_{name}".upper()


@contextlib.contextmanager
def _naming_environment(ctx: click.Context):
    """A bad value set through CHARLM_<COMMAND>_<OPTION> is reported with that variable's
    name, since the user typed no such option."""
    try:
        yield
    except CharlmError as exc:
        found = re.match(r"--([a-z0-9-]+)", str(exc))
        envvar = _envvar_of(ctx, found.group(1).replace("-", "_")) if found else None
        if envvar is None:
            raise
        raise CharlmError(f"{exc} (set by the environment variable {envvar})") from None


@cli.command(context_settings=CONTEXT, epilog="Every option can also be set in the environment as "
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
                       if name not in RESUMABLE_OPTIONS and _given(ctx, name))
        if fixed:
            names = ", ".join("--" + name.replace("_", "-") for name in fixed)
            raise CharlmError(f"{names} cannot change when resuming; only stop limits, cadence, hardware, --lr, --grad-clip and the divergence options can")
        train_config = run_config.train
        given = {name for name in RESUMABLE_OPTIONS & set(options) if _given(ctx, name)}
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
        with _naming_environment(ctx):
            train_config.validate()
            ModelConfig(vocab_size=2, **model_options).validate()
        if out is not None:  # fail before a long corpus preparation
            RunDirectory(out).check(overwrite=overwrite)
        check_out_writable(out if out is not None else Path("runs"))
    distributed.check_lane_share(train_config.batch_size, distributed.launched_world()[2])
    main_source = None
    if not resume and not _given(ctx, "data"):
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

    with _naming_environment(ctx):
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
        model, which = run_dir.load_model("auto", device=device)
        console.heading(f"sample from the {which} checkpoint:")
        generator = Generator(model, corpus.tokenizer, device)
        for text in generator.stream("", train_config.sample_length, SampleConfig(), seed=train_config.seed):
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
            f"the corpus now gives a different vocabulary than the run was trained with; "
            f"restore the original --data or start a new run"
        )


def _read_prompt_file(path: Path) -> str:
    """The text of --prompt-file: UTF-8, at most MAX_PROMPT_BYTES (so /dev/zero cannot run
    the machine out of memory; a pipe such as <(command) is fine)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPT_BYTES + 1)
    except FileNotFoundError:
        raise CharlmError(f"--prompt-file: no such file: {path}") from None
    except IsADirectoryError:
        raise CharlmError(f"--prompt-file: {path} is a folder; give a text file") from None
    except OSError as exc:
        raise CharlmError(f"--prompt-file: {path} cannot be read ({exc.strerror})") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise CharlmError(
            f"--prompt-file: {path} is larger than {MAX_PROMPT_BYTES >> 20} MiB, the most a prompt may be; "
            "give the end of it"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CharlmError(f"--prompt-file: {path} is not UTF-8 (byte {exc.start}); convert it") from None


def _require_utf8(text: str, option: str, what: str) -> None:
    """Refuse an argument that is not Unicode text: bytes that are not UTF-8 in the command
    line arrive as lone surrogates, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CharlmError(f"{option}: character {exc.start} is not valid UTF-8; give {what} as UTF-8 text") from None


def _show_char(ch: str) -> str:
    """A character for a notice: quoted when it prints as itself, else its code point (a
    control character, a bidi override or a lone combining mark would act on the terminal
    or on the text around it)."""
    if ch.isprintable() and unicodedata.category(ch)[0] not in "MCZ":
        return repr(ch)
    return f"U+{ord(ch):04X}"


def _unescape(text: str) -> str:
    r"""Read \n, \t, \r and \\ in a command-line string as the characters they name."""
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in escapes:
            out.append(escapes[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@cli.command(context_settings=CONTEXT, epilog="Every option can also be set in the environment as "
             "CHARLM_GENERATE_<OPTION>, e.g. CHARLM_GENERATE_TEMPERATURE=0.5.")
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN_DIR")
@click.option("--prompt", "-p", default="", help="Text to continue; it is printed before the continuation.")
@click.option("--prompt-file", type=click.Path(path_type=Path, dir_okay=False),
              help=f"Read the prompt from a file (UTF-8, at most {MAX_PROMPT_BYTES >> 20} MiB).")
@click.option("--max-tokens", "-n", type=int, default=500,
              help=f"Tokens to generate per sample (at most {MAX_TOKENS:,}).")
@click.option("--temperature", type=float, default=SampleConfig.temperature, help="0 is greedy; higher is wilder.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token (same as --temperature 0).")
@click.option("--top-k", type=int, help="Sample only from the k most likely tokens (clamped to the vocabulary).")
@click.option("--top-p", type=float, help="Sample only from the smallest set of tokens with at least this probability.")
@click.option("--num-samples", "-N", type=int, default=1,
              help=f"Samples to make, together as one batch (at most {MAX_SAMPLES:,}, and what fits in memory).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED - 1),
              help="Random seed: the same seed gives the same text on the same machine and device.")
@click.option("--stop", multiple=True, metavar="TEXT",
              help=r"End a sample when this text appears (it is not printed); repeatable. \n, \t are read as escapes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per sample instead of plain text.")
@click.option("--checkpoint", type=click.Choice(["auto", "best", "last"]), default="auto",
              help="Which weights: auto takes best, else last.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto picks CUDA when present.")
@click.option("--threads", type=int, help="CPU threads. Default: one per available core.")
def generate(run: Path, prompt: str, prompt_file: Optional[Path], max_tokens: int, temperature: float, greedy: bool,
             top_k: Optional[int], top_p: Optional[float], num_samples: int, seed: Optional[int], stop: tuple[str, ...],
             as_json: bool, checkpoint: str, device: str, threads: Optional[int]) -> None:
    """Generate text from a trained run. Text streams to stdout; notices go to stderr."""
    _one_process_only("generate")
    console = Console()
    if prompt_file is not None:
        if prompt:
            raise CharlmError("give --prompt or --prompt-file, not both")
        prompt = _read_prompt_file(prompt_file)
    _require_utf8(prompt, "--prompt", "the prompt")
    check_counts(num_samples, max_tokens)  # before loading the model; its memory is checked after
    if threads is not None and threads < 1:
        raise CharlmError(f"--threads must be at least 1 (got {threads})")
    sample_config = SampleConfig(temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p)
    sample_config.validate()
    stops = [_unescape(s) for s in stop]
    if any(not s for s in stops):
        raise CharlmError("--stop needs some text")
    for text in stops:
        _require_utf8(text, "--stop", "the stop text")

    torch_device = resolve_device(device)
    set_threads(threads)
    generator = Generator(run, device=torch_device, checkpoint=checkpoint)
    generator.check_limits(num_samples, max_tokens)  # before anything is printed
    unknown = generator.unknown_in_prompt(prompt)
    if unknown:
        shown = ", ".join(_show_char(ch) for ch in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        console.warn(f"the model never saw {len(unknown)} prompt character(s): {shown}; they are left out")
    if seed is None:
        seed = int(torch.seed() % (1 << 31))
    console.note(f"{generator.checkpoint} checkpoint of {run}; seed {seed}")

    chunks = generator.stream_samples(prompt, num_samples, max_tokens, sample_config, seed, stops)
    if as_json:
        for _ in chunks:
            pass
        for index, result in enumerate(generator.last_results):
            record = {"sample": index, "prompt": prompt, "text": result.text, "tokens": result.tokens,
                      "finish": result.finish, "seed": seed}
            Console.write_text(json.dumps(record, ensure_ascii=False) + "\n")
        return

    # The first sample streams live; the others are made alongside it and printed after it.
    for index in range(num_samples):
        if num_samples > 1:
            Console.write_text(("\n" if index else "") + f"--- sample {index + 1} of {num_samples} ---\n")
        Console.write_text(prompt)
        if index == 0:
            for sample, text in chunks:
                if sample == 0:
                    Console.write_text(text)
        else:
            Console.write_text(generator.last_results[index].text)
        if not (prompt + generator.last_results[index].text).endswith("\n"):
            Console.write_text("\n")


@cli.command(context_settings=CONTEXT, epilog="Every option can also be set in the environment as "
             "CHARLM_PERPLEXITY_<OPTION>. Units are defined in the README.")
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN_DIR")
@click.option("--data", "-d", metavar="PATH|-", help="Text to score: a file, a folder, or - for stdin. "
              "Default: the run's own test split, else its validation split.")
@click.option("--split", type=click.Choice(["auto", "val", "test"]), default="auto",
              help="Which of the run's splits to score when --data is not given.")
@click.option("--per-line", is_flag=True, help="Score each line on its own, from a fresh state.")
@click.option("--field", metavar="NAME", help="With --per-line: read JSON lines and score this field of each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object, or one per line with --per-line).")
@click.option("--lanes", type=int,
              help="Parallel lanes; each after the first is a context reset. 1: every token sees all before it. "
                   f"Default: the run's validation lanes (--eval-batch-size, {DEFAULT_LANES} unless changed).")
@click.option("--window", type=int, default=DEFAULT_WINDOW, help="Tokens per step of each lane (does not change the result).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", help="bf16 is faster on some CPUs.")
@click.option("--encoding-errors", type=click.Choice(ENCODING_ERRORS), default="strict",
              help="What to do with bytes that are not UTF-8 in --data.")
@click.option("--checkpoint", type=click.Choice(["auto", "best", "last"]), default="auto",
              help="Which weights: auto takes best, else last.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto picks CUDA when present.")
@click.option("--threads", type=int, help="CPU threads. Default: one per available core.")
def perplexity(run: Path, data: Optional[str], split: str, per_line: bool, field: Optional[str], as_json: bool,
               lanes: Optional[int], window: int, precision: str, encoding_errors: str, checkpoint: str, device: str,
               threads: Optional[int]) -> None:
    """Score text with a trained run: nats/token, perplexity, bits per char and per byte."""
    _one_process_only("perplexity")
    console = Console()
    if threads is not None and threads < 1:
        raise CharlmError(f"--threads must be at least 1 (got {threads})")
    if field and not per_line:
        raise CharlmError("--field goes with --per-line")
    if per_line and data is None:
        raise CharlmError("--per-line needs --data, the lines to score")
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    set_threads(threads)
    # the text first: a mistake in --data is reported before the model is loaded
    lines = _read_lines(data, field, encoding_errors) if per_line else None
    chunks = _read_text(data, encoding_errors) if data is not None and not per_line else None
    if chunks is not None and not any(chunks):
        raise CharlmError(f"--data {data}: nothing to score, the text is empty; give some text")
    scorer = Scorer(run, device=torch_device, precision=precision, checkpoint=checkpoint, lanes=lanes, window=window)
    console.note(f"{scorer.checkpoint} checkpoint of {run}; {scorer.tokenizer.kind} tokenizer; {precision}")

    if lines is not None:
        scores = scorer.score_lines([text for _, text in lines])
        if as_json:
            for (number, text), score in zip(lines, scores):
                Console.write_text(json.dumps({"line": number, **score.to_dict()}, allow_nan=False) + "\n")
        else:
            print_line_scores(lines, scores)
        _warn_unknown(console, sum(s.unknown for s in scores))
        return

    if data is None:
        label, score = scorer.score_split(split)
        label = f"{label} split of {run}"
    else:
        label = "stdin" if data == "-" else data
        score = scorer.score_text(chunks)
    context = scorer.tokenizer.decode([scorer.context_id])
    resets = score.context_resets
    method = (f"{score.lanes} lane{'s' if score.lanes != 1 else ''} ({resets} context reset{'s' if resets != 1 else ''}), "
              f"windows of {window}, state carried; the first token follows {context!r}")
    if as_json:
        Console.write_text(json.dumps({"text": label, **score.to_dict(), "method": method}, allow_nan=False) + "\n")
    else:
        print_score(label, score, method)
    _warn_unknown(console, score.unknown)


def _warn_unknown(console: Console, unknown: int) -> None:
    if unknown:
        console.warn(f"{unknown:,} character(s) are not in the model's vocabulary; they were scored as the "
                     "unknown symbol, which the model never predicts well")


def _read_text(data: str, errors: str) -> list[str]:
    """The text of --data as chunks cut at newlines (a file, a folder, or - for stdin)."""
    if data == "-":
        raw = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
        if len(raw) > MAX_STDIN_BYTES:
            raise CharlmError(
                f"stdin gave more than {MAX_STDIN_BYTES >> 30} GiB, the most --data - reads; "
                "save the text to a file and pass --data FILE"
            )
        try:
            text = raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as exc:
            raise CharlmError(f"stdin: byte {exc.start} is not valid UTF-8; pass --encoding-errors replace") from None
        return [text]
    source = resolve_source(data, "--data")
    return list(newline_chunks(source.iter_text(errors)))


def _read_lines(data: str, field: Optional[str], errors: str) -> list[tuple[int, str]]:
    """(line number, text) for each line of --data; with --field, that field of each JSON line."""
    text = "".join(_read_text(data, errors))
    where = "--data -" if data == "-" else f"--data {data}"
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if field:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                value = record[field]
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                raise CharlmError(
                    f"{where} line {number} is not a JSON object with a {field!r} field; "
                    "give one JSON object per line, or leave out --field"
                ) from None
            if not isinstance(value, str):
                raise CharlmError(f"{where} line {number}: field {field!r} is not text")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a "\ud800" escape in the JSON
                raise CharlmError(
                    f"{where} line {number}: field {field!r} is not valid Unicode: character {exc.start} is "
                    f"U+{ord(value[exc.start]):04X}, a lone surrogate (a \\u escape in the JSON); give UTF-8 text"
                ) from None
            line = value
        lines.append((number, line))
    if lines and lines[-1][1] == "" and text.endswith("\n") and not field:
        lines.pop()  # the final newline ends the last line; it does not start another
    if not any(line for _, line in lines):
        raise CharlmError("nothing to score: --data has no text")
    return lines


def main() -> None:
    cli(prog_name="charlm")
