"""charlm classify train: the options of a classifier run; the run itself is the library's.

The options share their names and meaning with `charlm train` wherever they mean the same
(the data and splits, the tokenizer, the cell and widths, optimisation, hardware, stop
limits, cadence, the divergence guard, --resume) and add the classifier's own: fields of
the data, direction, pooling, text length, the selection metric, early stopping, class
weights and transfer from a language model. The library (charlm.tasks.classify_run) plans
and trains; this prints what it did. Every option can also come from CHARLM_CLASSIFY_TRAIN_<OPTION>.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Optional

import click

from charlm.classifier_config import (
    CLASS_WEIGHTS,
    KEEP_SIDES,
    POOLINGS,
    SELECTION_METRICS,
    ClassifierConfig,
    ClassifyConfig,
)
from charlm.cli.console import Console, TrainReporter, duration
from charlm.cli.errors import EXIT_INTERRUPTED
from charlm.cli.options import CONTEXT, given_options, naming_environment
from charlm.cli.train import CADENCE, DEFAULT_CADENCE, StopFlag, apply_cadence
from charlm.config import (
    CELLS,
    DEVICES,
    DIVERGENCE_ACTIONS,
    ENCODING_ERRORS,
    MAX_SEED,
    PRECISIONS,
    SPM_MODEL_TYPES,
    TOKENIZERS,
    TrainConfig,
)
from charlm.inference.classifier import Classifier
from charlm.tasks.classify_run import SHAPE_FIELDS, ClassifierRun
from charlm.training import distributed
from charlm.training.faults import ENV_VAR as FAULTS_ENV_VAR
from charlm.training.faults import FaultPlan
from charlm.training.resume import resume_command

_T, _C, _S = TrainConfig, ClassifyConfig, ClassifierConfig
CLASSIFY_FIELDS = tuple(f.name for f in dataclasses.fields(ClassifyConfig) if f.name != "lm_checkpoint")
RUN_OPTIONS = ("out", "resume", "overwrite")
# where a classifier's good defaults differ from a language model's
DEFAULT_WARMUP = 50


def _default(name: str):
    for cls in (_S, _C, _T):
        for f in dataclasses.fields(cls):
            if f.name == name and f.default is not dataclasses.MISSING:
                return f.default
    raise KeyError(name)


def opt(*flags: str, help: str, type: Optional[click.ParamType] = None, default: Any = ...):
    """An option whose default is its config field's (the classifier's shape, then
    ClassifyConfig, then TrainConfig), and whose type is the default's unless given."""
    name = next(flag for flag in flags if flag.startswith("--"))[2:].replace("-", "_")
    value = _default(name) if default is ... else default
    return click.option(*flags, type=type or builtins_type(value), default=value, help=help)


def builtins_type(value: Any) -> type:
    return type(value) if value is not None else str


class ClassifyReporter(TrainReporter):
    """TrainReporter in a classifier's words: texts and accuracy rather than tokens and bits."""

    def _on_start(self, e: dict[str, Any]) -> None:
        limits = [template.format(e[key]) for key, template in (("max_steps", "{:,} steps"), ("epochs", "{:g} epochs"))
                  if e.get(key)]  # fmt: skip
        if e.get("max_time"):
            limits.append(duration(e["max_time"]))
        transferred = f"; {len(e['transferred'])} tensors from the language model" if e.get("transferred") else ""
        self.console.info(
            f"classifier: {e['parameters']:,} parameters on {e['device']} ({e['precision']}, {e['threads']} CPU "
            f"thread{'s' if e['threads'] != 1 else ''}); {e['classes']} classes; train {e['train_examples']:,} "
            f"texts, val {e['val_examples']:,}{transferred}; stops after {' or '.join(limits)}"
            + (", whichever comes first" if len(limits) > 1 else "")
        )
        self._per_text = e["train_tokens"] / max(e["train_examples"], 1)
        if self.console.is_terminal:
            self._start_bar()

    def _texts_per_s(self, e: dict[str, Any]) -> float:
        return e["tokens_per_s"] / max(getattr(self, "_per_text", 1.0), 1e-9)

    def _status(self, e: dict[str, Any]) -> str:
        loss = "-" if e["loss"] is None else f"{e['loss']:.3f}"
        return f"step {e['step']:,}  loss {loss}  {self._texts_per_s(e):,.0f} texts/s"

    def _on_train(self, e: dict[str, Any]) -> None:
        if self.progress is not None:
            super()._on_train(e)
        elif self._last_plain_line is None or e["elapsed"] - self._last_plain_line >= self.plain_interval_s:
            self._last_plain_line = e["elapsed"]
            loss = "-" if e["loss"] is None else f"{e['loss']:.4f}"
            self.console.info(
                f"step {e['step']:>7,}  epoch {e['epoch']:6.2f}  loss {loss}  lr {e['lr']:.2e}  "
                f"{self._texts_per_s(e):>7,.0f} texts/s  {duration(e['elapsed'])}"
            )

    def _on_eval(self, e: dict[str, Any]) -> None:
        mark = "  (best)" if e.get("best") else ""
        self._print(
            f"eval step {e['step']:>7,}  val loss {e['loss']:.4f}  accuracy {e['accuracy']:.2%}  "
            f"macro-F1 {e['macro_f1']:.4f}  at {duration(e['elapsed'])}{mark}",
            style="cyan",
        )

    def _on_end(self, e: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=1000 if e["reason"] != "interrupted" else None)
        self.close()
        reasons = {"max_steps": "reached --max-steps", "max_time": "reached --max-time", "epochs": "reached --epochs",
                   "interrupted": "interrupted", "early_stop": "stopped early (--patience)"}  # fmt: skip
        self.console.info(f"stopped at step {e['step']:,} after {duration(e['elapsed'])}: "
                          f"{reasons.get(e['reason'], e['reason'])}")  # fmt: skip


@click.command("train", context_settings=CONTEXT,
               epilog="Every option can also be set in the environment as CHARLM_CLASSIFY_TRAIN_<OPTION>.")  # fmt: skip
@click.option(
    "--data",
    "-d",
    metavar="PATH",
    help="Labelled texts (needed unless --resume, which reads the run's own): CSV/TSV with a header, JSON lines, "
    "fastText (__label__X text), label<TAB>text lines, a folder with a sub-folder per class, or a folder of files "
    "with one per class and one text per line.",
)
@click.option("--val-data", metavar="PATH", help="Separate validation data (instead of --val-fraction).")
@click.option("--test-data", metavar="PATH", help="Separate test data (instead of --test-fraction).")
@opt("--val-fraction", help="Share of each class kept for validation (a stratified, seeded cut).")
@opt("--test-fraction", help="Share of each class kept for testing (not used in training).")
@click.option("--text-field", metavar="NAME", help="The text's column or JSON field. Default: text, sentence, ...")
@click.option("--label-field", metavar="NAME", help="The label's column or JSON field. Default: label, class, ...")
@click.option("--out", "-o", type=click.Path(path_type=Path), metavar="DIR", help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@opt("--tokenizer", type=click.Choice(TOKENIZERS), help="How text becomes tokens.")
@opt("--vocab-size", help="SentencePiece vocabulary size (above 260).")
@click.option("--spm-model", "spm_model_type", type=click.Choice(SPM_MODEL_TYPES), default=_T.spm_model_type,
              help="SentencePiece model type.")  # fmt: skip
@opt("--encoding-errors", type=click.Choice(ENCODING_ERRORS), help="Bytes that are not UTF-8: stop, or replace them.")
@click.option(
    "--from-lm",
    metavar="RUN",
    help="Start the embedding and encoder from this charlm language-model run (its tokenizer and shape too).",
)
@opt("--freeze-epochs", help="With --from-lm: epochs in which only the new layers train.")
@opt("--lm-lr-factor", help="With --from-lm: the transferred layers' learning rate as a share of --lr.")
@opt("--cell", type=click.Choice(CELLS + ("rnn",)), help="Recurrent cell (rnn = rnn-tanh).")
@opt("--layers", help="Stacked recurrent layers (L).")
@opt("--hidden", help="Hidden width of each direction (H).")
@opt("--embed", help="Embedding width (E).")
@opt("--dropout", help="Dropout on the embeddings, between layers and on the pooled vector.")
@click.option("--bidirectional/--unidirectional", default=_S.bidirectional,
              help="Read each text in both directions (the backward one starts fresh with --from-lm).")  # fmt: skip
@opt("--pooling", type=click.Choice(POOLINGS), help="How the outputs over a text become one vector.")
@opt("--max-length", type=int, help="Tokens kept of each text (default: all of it).")
@opt("--keep", type=click.Choice(KEEP_SIDES), help="Which end of a longer text --max-length keeps.")
@opt("--metric", type=click.Choice(SELECTION_METRICS), help="The validation figure the best checkpoint follows.")
@opt("--patience", type=int, help="Stop after this many validations without improvement (default: never).")
@opt("--class-weights", type=click.Choice(CLASS_WEIGHTS), help="auto: weigh classes by inverse frequency.")
@opt("--batch-size", "-b", help="Texts per step (B).")
@opt("--lr", help="Peak learning rate (AdamW).")
@opt("--min-lr-ratio", help="Final learning rate as a fraction of the peak.")
@opt("--warmup-steps", help="Linear warmup steps.", default=DEFAULT_WARMUP)
@opt("--weight-decay", help="AdamW weight decay on weight matrices.")
@opt("--grad-clip", help="Clip the gradient norm to this (0: off).")
@opt("--precision", type=click.Choice(PRECISIONS), help="auto: bf16 where the hardware has it, else fp32 on a CPU.")
@opt("--device", type=click.Choice(DEVICES), help="auto picks CUDA when present.")
@click.option("--threads", type=int, help="CPU threads per process. Default: one per available core.")
@click.option("--compile/--no-compile", default=_T.compile, help="Compile the training step with torch.compile.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED - 1), default=_T.seed, help="Random seed (also of the split).")
@click.option("--max-steps", type=int, help="Stop after this many steps.")
@click.option("--max-time", type=float, help="Stop after this many seconds of training. With no stop option: 300.")
@click.option("--epochs", type=float, help="Stop after this many passes over the training texts.")
@click.option(
    "--eval-every", type=int, help="Validate (and checkpoint) every N steps. Default: once an epoch, at most 500."
)
@opt("--eval-batch-size", help="Texts per batch when validating.")
@click.option("--checkpoint-every", type=CADENCE, multiple=True, default=DEFAULT_CADENCE, metavar="N|TIME",
              help="Also checkpoint every N steps and/or every TIME (e.g. 90s, 10m).")  # fmt: skip
@opt("--on-divergence", type=click.Choice(DIVERGENCE_ACTIONS), help="A step whose loss is NaN/inf or spikes.")
@opt(
    "--spike-factor",
    default=0.0,
    help="A loss above this many times its recent average counts as a bad step (0: off; a classifier's batch "
    "losses vary too much for the language model's default of 4).",
)
@opt("--log-every", help="Log training loss every N steps.")
@click.pass_context
def train(ctx: click.Context, **options: Any) -> None:
    """Train a recurrent classifier on labelled texts; write a self-contained run directory.

    Under torchrun (torchrun --nproc_per_node=N -m charlm classify train ...) the N processes
    train one model with DistributedDataParallel, sharing each batch of --batch-size texts."""
    world = distributed.start()  # a no-op unless torchrun started this process
    status = _train(ctx, Console(rank=world.rank if world.distributed else None), options, world)
    distributed.stop(world)
    if status:
        sys.exit(status)


def _train(ctx: click.Context, console: Console, options: dict[str, Any], world: distributed.World) -> int:
    given = given_options(ctx, ctx.params) - set(RUN_OPTIONS)
    if "checkpoint_every" in given:
        given.add("checkpoint_seconds")
    out, resume, overwrite = (options.pop(name) for name in RUN_OPTIONS)
    if options["data"] is None and not resume:
        raise click.UsageError("Missing option '--data' / '-d'.")
    shape = {name: options.pop(name) for name in SHAPE_FIELDS}
    classify = {name: options.pop(name) for name in CLASSIFY_FIELDS}
    apply_cadence(options)
    if options.get("eval_every") is None:
        options.pop("eval_every")
    if resume:
        shape_given = sorted((given & set(SHAPE_FIELDS)) | (given & set(CLASSIFY_FIELDS)))
        if shape_given:
            names = ", ".join("--" + name.replace("_", "-") for name in shape_given)
            raise click.UsageError(f"{names} cannot change when resuming; leave them out")
    with naming_environment(ctx):
        run = ClassifierRun.start(options, classify, shape, given, out, resume, overwrite, world=world)
        data = run.prepare_data()
    for note in data.notes:
        console.note(note)
    splits = data.splits
    console.note(
        f"data {splits.train.source}: {len(data.train):,} train, {len(data.val):,} val, {len(data.test):,} test texts; "
        f"{len(splits.labels)} classes; {data.tokenizer.kind} tokenizer, vocabulary {data.tokenizer.vocab_size:,}"
    )
    if run.lm is not None:
        lm = run.lm.model
        console.info(
            f"from the language model {run.options.from_lm} ({run.options.lm_checkpoint} checkpoint): "
            f"{lm.layers}x{lm.hidden} {lm.cell}, embed {lm.embed}"
            + ("; the backward direction starts fresh" if run.shape.get("bidirectional") else "")
        )
    with naming_environment(ctx):
        run_dir = run.open_run_directory()
    console.info(f"run directory: {run_dir.path}")
    faults = FaultPlan(os.environ.get(FAULTS_ENV_VAR))
    reporter = ClassifyReporter(console)
    with StopFlag() as stop, reporter:
        trainer = run.trainer(on_event=reporter if world.is_main else None, should_stop=stop, faults=faults)
        result = trainer.run()
        trainer.close()
    if result.reason == "interrupted":
        console.info(f"checkpoint saved; continue with: {resume_command(run_dir.path, world.distributed)}")
        return EXIT_INTERRUPTED
    best = trainer.task.best_metric
    if best is not None:
        console.info(f"best validation {run.options.metric.replace('_', '-')}: {best:.4f} (the best checkpoint)")
    if len(data.test) and world.is_main:
        found = Classifier(run_dir.path, device=run.device, precision=run.precision).evaluate(splits.test)
        report = found.report
        run_dir.append_metrics({"event": "test", "split": "test", "step": result.step, "checkpoint": found.checkpoint,
                                "examples": report.examples, "accuracy": report.accuracy, "macro_f1": report.macro_f1,
                                "loss": found.loss}, durable=True)  # fmt: skip
        console.info(
            f"test split ({report.examples:,} texts held out, never seen in training), {found.checkpoint} checkpoint: "
            f"accuracy {report.accuracy:.2%}, macro-F1 {report.macro_f1:.4f}"
        )
    return 0
