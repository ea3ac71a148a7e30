"""charlm train: the options of a language-model run; the run itself is the library's.

The command parses the options (every one also from CHARLM_TRAIN_<OPTION>), works out which
the user gave, and hands them to charlm.tasks.lm_run, reporting each stage: the corpus, the
run directory, the progress of training, a sample at the end. Ctrl-C once stops at the next
step with a checkpoint; under torchrun, a process that lost its peers says so in one line.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import click

from charlm.cli.console import Console, TrainReporter
from charlm.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED
from charlm.cli.options import CONTEXT, given_options, naming_environment
from charlm.config import (
    CELLS,
    DEFAULT_MAX_TIME_S,
    DEVICES,
    DIVERGENCE_ACTIONS,
    DROPOUT_KINDS,
    ENCODING_ERRORS,
    MAX_SEED,
    PRECISIONS,
    SPM_MODEL_TYPES,
    TOKENIZERS,
    ModelShape,
    SampleConfig,
    TrainConfig,
)
from charlm.errors import CharlmError, first_line
from charlm.inference.generate import Generator
from charlm.tasks.lm_run import LanguageModelRun
from charlm.text.corpora import DEFAULT_CORPUS
from charlm.training import distributed
from charlm.training.faults import ENV_VAR as FAULTS_ENV_VAR
from charlm.training.faults import FaultPlan
from charlm.training.resume import resume_command

_T, _M = TrainConfig, ModelShape  # option defaults live in the dataclasses
SHAPE_OPTIONS = tuple(f.name for f in dataclasses.fields(ModelShape))
RUN_OPTIONS = ("out", "resume", "overwrite")


def config_option(*flags: str, help: str, type: Optional[click.ParamType] = None):
    """An option whose default is the config field of its name (ModelShape's for the
    model's shape, else TrainConfig's), and whose type is the field's unless given."""
    name = next(flag for flag in flags if flag.startswith("--"))[2:].replace("-", "_")
    default = getattr(_M if name in SHAPE_OPTIONS else _T, name)
    return click.option(*flags, type=type or builtins.type(default), default=default, help=help)


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


def apply_cadence(options: dict[str, Any]) -> None:
    """Turn the --checkpoint-every values into checkpoint_every (steps) and checkpoint_seconds."""
    steps = seconds = None
    for kind, amount in options.pop("checkpoint_every"):
        if kind == "steps":
            steps = amount
        else:
            seconds = amount
    options["checkpoint_every"], options["checkpoint_seconds"] = steps, seconds


class StopFlag:
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

    def __enter__(self) -> "StopFlag":
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


@click.command(
    context_settings=CONTEXT,
    epilog="Every option can also be set in the environment as "
    "CHARLM_TRAIN_<OPTION>, e.g. CHARLM_TRAIN_MAX_STEPS=1000 or CHARLM_TRAIN_DEVICE=cpu.",
)
@click.option(
    "--data",
    "-d",
    default=DEFAULT_CORPUS,
    metavar="PATH|NAME",
    help="Corpus: a text file, a folder of text files, or a named corpus (shakespeare, pystdlib). "
    "The default downloads tiny Shakespeare once and falls back to pystdlib offline.",
)
@click.option("--val-data", metavar="PATH", help="Separate validation text (instead of --val-fraction).")
@click.option("--test-data", metavar="PATH", help="Separate test text (instead of --test-fraction).")
@config_option("--val-fraction", help="Last fraction of the corpus kept for validation.")
@config_option("--test-fraction", help="Fraction after validation kept for testing.")
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Run directory. Default: runs/<corpus>-<date>-<time>.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.option(
    "--init-from",
    metavar="RUN",
    help="Start a new run from the language-model run in RUN: its weights (best checkpoint, else last), its "
    "tokenizer and its model's shape, e.g. to adapt it to the text of --data. --dropout and the regularisers may "
    "be given anew; --cell, --layers, --hidden, --embed, --tie-weights and the tokenizer options come from RUN. "
    "A new optimizer, step 0; the budget rule may still choose --batch-size, --lr and --warmup-steps.",
)
@config_option("--tokenizer", type=click.Choice(TOKENIZERS), help="How text becomes tokens.")
@config_option("--vocab-size", help="SentencePiece vocabulary size (above 260).")
@click.option(
    "--spm-model",
    "spm_model_type",
    type=click.Choice(SPM_MODEL_TYPES),
    default=_T.spm_model_type,
    help="SentencePiece model type.",
)
@config_option(
    "--encoding-errors",
    type=click.Choice(ENCODING_ERRORS),
    help="What to do with bytes that are not UTF-8: stop with their position, or replace them with U+FFFD.",
)
@config_option("--cell", type=click.Choice(CELLS + ("rnn",)), help="Recurrent cell (rnn = rnn-tanh).")
@config_option("--layers", help="Stacked recurrent layers (L).")
@config_option("--hidden", help="Hidden width (H).")
@config_option("--embed", help="Embedding width (E).")
@config_option("--dropout", help="Dropout on embeddings, between layers and on the output.")
@config_option(
    "--dropout-kind",
    type=click.Choice(DROPOUT_KINDS),
    help="How --dropout draws its masks: standard, fresh at every position; locked (variational), one mask "
    "per lane for the whole window, on the embeddings, between layers and on the output.",
)
@config_option(
    "--weight-dropout",
    help="DropConnect on the recurrent hidden-to-hidden weights, one mask per batch (0: off).",
)
@config_option(
    "--embed-dropout",
    help="Drop whole token types from the embedding, a new draw per batch (0: off).",
)
@click.option("--tie-weights/--no-tie-weights", default=_M.tie_weights, help="Share the embedding and output matrices.")
@click.option(
    "--auto-size/--no-auto-size",
    default=_T.auto_size,
    help="Choose --hidden, --embed, --tie-weights, --dropout-kind, --batch-size, --lr and --warmup-steps, those not given, "
    "for the budget and this machine's measured speed (a probe of a few seconds, counted in --max-time).",
)
@config_option("--batch-size", "-b", help="Parallel lanes of the token stream (B).")
@config_option("--seq-len", "-t", help="Window length for truncated BPTT (T).")
@click.option("--random-offset/--no-random-offset", default=_T.random_offset, help="Move window boundaries each epoch.")
@config_option("--lr", help="Peak learning rate (AdamW).")
@config_option("--min-lr-ratio", help="Final learning rate as a fraction of the peak.")
@config_option("--warmup-steps", help="Linear warmup steps.")
@config_option("--weight-decay", help="AdamW weight decay on weight matrices.")
@config_option("--grad-clip", help="Clip the gradient norm to this (0: off).")
@config_option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="auto: bf16 where the hardware has it (CUDA from Ampere on, or a CPU with AVX512-BF16/AMX), "
    "else fp16 with a GradScaler on a GPU and fp32 on a CPU.",
)
@config_option("--device", type=click.Choice(DEVICES), help="auto picks CUDA when present.")
@click.option(
    "--threads",
    type=int,
    help="CPU threads per process. Default: one per available core, shared among the processes "
    "torchrun starts on this machine (torchrun's own default is 1).",
)
@click.option(
    "--compile/--no-compile",
    default=_T.compile,
    help="Compile the training step with torch.compile: a slower start, then faster steps, mostly on GPUs.",
)
@click.option("--seed", type=click.IntRange(0, MAX_SEED - 1), default=_T.seed, help="Random seed.")
@click.option("--max-steps", type=int, help="Stop after this many steps.")
@click.option(
    "--max-time",
    type=float,
    help=f"Stop after this many seconds of training. With no stop option: {DEFAULT_MAX_TIME_S:g}.",
)
@click.option("--epochs", type=float, help="Stop after this many passes over the training split.")
@config_option("--eval-every", help="Validate (and checkpoint) every N steps.")
@config_option("--eval-batch-size", help="Lanes used for validation.")
@config_option(
    "--eval-tokens",
    help="Tokens each validation pass during training scores at most, a sample spread over the split "
    "(0: all); the closing validation always scores all of it.",
)
@click.option(
    "--checkpoint-every",
    type=CADENCE,
    multiple=True,
    default=DEFAULT_CADENCE,
    metavar="N|TIME",
    help="Also checkpoint every N steps and/or every TIME (e.g. 90s, 10m, 2h); repeat to give both. "
    "Given values replace both defaults.",
)
@config_option(
    "--on-divergence",
    type=click.Choice(DIVERGENCE_ACTIONS),
    help="A step whose loss or gradient is NaN/inf, or whose loss spikes: skip its update (rolling back "
    "to the last checkpoint after --skip-limit in a row), roll back at once, or stop.",
)
@config_option("--spike-factor", help="A loss above this many times its recent average counts as a bad step (0: off).")
@config_option("--skip-limit", help="Bad steps in a row that trigger a rollback.")
@config_option("--max-rollbacks", help="Rollbacks in a row (no recovery between) before the run gives up.")
@config_option("--rollback-lr-factor", help="Each rollback multiplies the learning rate by this.")
@config_option("--log-every", help="Log training loss every N steps.")
@config_option("--sample-length", help="Tokens of sample text printed at the end (0: none).")
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
        then = (
            f"; the last checkpoint is intact, continue with: {resume_command(where['run'], world.distributed)}"
            if "run" in where
            else ""
        )
        raise CharlmError(
            f"lost contact with the other processes of this torchrun job ({first_line(exc)}); one of them stopped "
            f"first, and its own message, if it left one, is above{then}"
        ) from None
    # after an error, the process just exits (torchrun stops the others); a clean end waits
    # for every process before the group is taken down, or gloo may abort one of them
    distributed.stop(world)
    if status:
        sys.exit(status)


def _train(
    ctx: click.Context, world: distributed.World, console: Console, options: dict[str, Any], where: dict[str, Path]
) -> int:
    """Returns the exit status; raises on errors. Records the run directory in `where`."""
    given = given_options(ctx, ctx.params) - set(RUN_OPTIONS)
    if "checkpoint_every" in given:  # one option sets both cadences
        given.add("checkpoint_seconds")
    out, resume, overwrite = (options.pop(name) for name in RUN_OPTIONS)
    shape = ModelShape(**{name: options.pop(name) for name in SHAPE_OPTIONS})
    apply_cadence(options)
    with naming_environment(ctx):
        run = LanguageModelRun.start(options, shape, given, out, resume, overwrite, world=world)
    if run.plan.init is not None:
        console.info(f"starting from {run.plan.init.describe()}, with its tokenizer and model shape")

    corpus = run.prepare_corpus(on_stage=console.note)
    for note in corpus.notes:
        console.warn(note)
    how = "cached" if corpus.from_cache else f"prepared in {run.prepare_seconds:.1f}s"
    console.note(
        f"corpus {corpus.label}: {corpus.tokenizer.kind} tokenizer, vocabulary {corpus.tokenizer.vocab_size:,}; "
        f"{how} ({corpus.cache_dir})"
    )
    choice = run.size_model()
    if choice is not None:
        shape, train = run.plan.shape, run.train
        probed = f"; probed {len(choice.measured)} candidates in {choice.probe_seconds:.1f}s" if choice.measured else ""
        model = (
            f"{shape.layers}x{shape.hidden} {shape.cell}, embed {shape.embed}"
            f"{', tied output' if shape.tie_weights else ''}, {shape.dropout_kind} dropout {shape.dropout:g}"
        )
        batch = f"batch {train.batch_size}, lr {train.lr:.3g}, warmup {train.warmup_steps}{probed}"
        if run.plan.init is not None:  # the budget rule chose no part of the model
            console.info(f"model from --init-from: {model}; for the budget: {batch}")
        else:
            console.info(f"model for the budget: {model}; {batch}")
        console.note(f"why: {choice.reason} (--no-auto-size or any of these options keeps your own)")
    with naming_environment(ctx):
        run_dir = run.open_run_directory()
    where["run"] = run_dir.path
    console.info(f"run directory: {run_dir.path}")

    faults = FaultPlan(os.environ.get(FAULTS_ENV_VAR))
    if faults:
        console.warn(f"{FAULTS_ENV_VAR} is set: this run fails on purpose ({os.environ[FAULTS_ENV_VAR]})")
    reporter = TrainReporter(console)
    with StopFlag() as stop, reporter:
        trainer = run.trainer(on_event=reporter if world.is_main else None, should_stop=stop, faults=faults)
        result = trainer.run()
        trainer.close()

    if result.reason == "interrupted":
        console.info(f"checkpoint saved; continue with: {resume_command(run_dir.path, world.distributed)}")
        return EXIT_INTERRUPTED
    train_config, device = run.train, run.device
    if train_config.sample_length > 0 and world.is_main:
        generator = Generator(run_dir.path, device=device)  # opens the run: best weights, else last
        console.heading(f"sample from the {generator.checkpoint} checkpoint:")
        sample = generator.generate("", train_config.sample_length, config=SampleConfig(), seed=train_config.seed)
        for _, text in sample:
            console.write_text(text)
        console.write_text("\n")
    return 0
