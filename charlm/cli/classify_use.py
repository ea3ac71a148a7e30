"""charlm classify evaluate / charlm classify predict: use a trained classifier run.

`evaluate` scores a run on labelled texts (any format `charlm classify train` reads):
accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix, as
tables on stdout or one JSON object; labels the run does not know are counted in a warning
and left out of the figures. `predict` labels texts given as arguments or read from --data
(a file or stdin): one line per text on stdout, LABEL<TAB>PROBABILITY<TAB>TEXT (or one JSON
object per line), written as each batch is done, in input order. Notes go to stderr.
The work is the library's (charlm.inference.classifier.Classifier); this parses and prints.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import click
from rich.console import Console as RichConsole
from rich.table import Table
from rich.text import Text

from charlm.cli.console import Console, plain
from charlm.cli.errors import one_process_only
from charlm.cli.options import CONTEXT, names_the_environment, require_threads, run_weights_options
from charlm.config import ENCODING_ERRORS
from charlm.errors import CharlmError, OptionError
from charlm.hardware import resolve_device, set_threads
from charlm.inference.classifier import Classifier, Evaluation, Prediction, listed
from charlm.text.inputs import MAX_STDIN_BYTES, require_utf8
from charlm.text.labelled import read_unlabelled

MAX_CONFUSION_CLASSES = 20  # a wider confusion matrix is left to --json
STREAM_TEXTS = 2048  # texts classified (and printed) together; each group is batched by length inside
EXPLAIN_SHOWN = 8  # plain output with --explain: the heaviest tokens shown
FIELD_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".ndjson")  # read by column or field, not one per line
_FIELD_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _encoding_option(command):
    return click.option(
        "--encoding-errors",
        type=click.Choice(ENCODING_ERRORS),
        default="strict",
        help="What to do with bytes that are not UTF-8 in --data.",
    )(command)


def _open(run: Path, checkpoint: str, device: str, threads: Optional[int]) -> Classifier:
    torch_device = resolve_device(device)
    set_threads(threads)
    return Classifier(run, checkpoint=checkpoint, device=torch_device)


# ----- evaluate -----------------------------------------------------------------------------


@click.command(
    context_settings=CONTEXT,
    epilog="Every option can also be set in the environment as CHARLM_CLASSIFY_EVALUATE_<OPTION>.",
)
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN_DIR")
@click.option(
    "--data",
    "-d",
    required=True,
    metavar="PATH",
    help="Labelled texts: any format charlm classify train reads (CSV/TSV with a header, JSON lines, "
    "label<TAB>text, fastText, a folder with one file or folder per class).",
)
@click.option("--text-field", metavar="NAME", help="The text column or field (default: text, sentence, review, ...).")
@click.option("--label-field", metavar="NAME", help="The label column or field (default: label, class, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@_encoding_option
@run_weights_options
@names_the_environment
def evaluate(
    run: Path,
    data: str,
    text_field: Optional[str],
    label_field: Optional[str],
    as_json: bool,
    encoding_errors: str,
    checkpoint: str,
    device: str,
    threads: Optional[int],
) -> None:
    """Evaluate a classifier run on labelled texts: accuracy, macro-F1, per-class figures, confusion."""
    one_process_only("classify evaluate")
    console = Console()
    require_threads(threads)
    classifier = _open(run, checkpoint, device, threads)
    result = classifier.evaluate(data, text_field, label_field, encoding_errors)
    for note in result.notes:
        console.note(note)
    console.note(
        f"{result.checkpoint} checkpoint of {run}; {result.examples:,} examples of {result.source} "
        f"classified in {result.seconds:.1f} s ({result.texts_per_s:,.0f} texts/s)"
    )
    if result.unknown:
        counts = ", ".join(f"{label!r}: {n:,}" for label, n in list(result.unknown.items())[:8])
        more = f" and {len(result.unknown) - 8:,} more labels" if len(result.unknown) > 8 else ""
        console.warn(
            f"{result.left_out:,} example(s) have labels the run does not know ({counts}{more}); they are left "
            f"out of every figure below (the run knows {listed(classifier.labels)})"
        )
    if as_json:
        Console.write_text(
            json.dumps({"run": str(run), **result.to_dict()}, ensure_ascii=False, allow_nan=False) + "\n"
        )
        return
    _print_evaluation(result, f"{run} on {result.source}")


def _print_evaluation(result: Evaluation, title: str) -> None:
    """The figures, the per-class table and the confusion matrix on stdout. Labels are user
    text: every cell is a rich Text, so "[x]" stays as it is and no markup is read."""
    report = result.report
    out = RichConsole(highlight=False, soft_wrap=False)
    out.print(Text(plain(f"evaluation of {title}"), style="bold"), soft_wrap=True)
    summary = Table(show_header=False, box=None, padding=(0, 2))
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    left_out = f" ({result.left_out:,} with unknown labels left out)" if result.left_out else ""
    for name, value in (
        ("examples", f"{report.examples:,}{left_out}"),
        ("accuracy", f"{report.accuracy:.4f}"),
        ("macro-F1", f"{report.macro_f1:.4f}"),
        ("loss (nats/example)", f"{result.loss:.4f}"),
    ):
        summary.add_row(Text(name), Text(value))
    out.print(summary)
    per_class = Table(box=None, padding=(0, 2))
    per_class.add_column(Text("label"), justify="left", overflow="fold")
    for name in ("precision", "recall", "F1", "support"):
        per_class.add_column(Text(name), justify="right")
    for row in report.per_class:
        per_class.add_row(
            Text(plain(row["label"])),
            Text(f"{row['precision']:.4f}"),
            Text(f"{row['recall']:.4f}"),
            Text(f"{row['f1']:.4f}"),
            Text(f"{row['support']:,}"),
        )
    out.print()
    out.print(Text("per class", style="bold"))
    out.print(per_class)
    out.print()
    if len(report.labels) > MAX_CONFUSION_CLASSES:
        out.print(
            Text(f"the confusion matrix of {len(report.labels):,} classes is in --json", style="dim"), soft_wrap=True
        )
        return
    out.print(Text("confusion matrix (rows: the true label, columns: the predicted one)", style="bold"), soft_wrap=True)
    confusion = Table(box=None, padding=(0, 1))
    confusion.add_column(Text("true \\ predicted"), justify="left", overflow="fold")
    for label in report.labels:
        confusion.add_column(Text(plain(label)), justify="right", overflow="fold")
    for label, counts in zip(report.labels, report.confusion):
        confusion.add_row(Text(plain(label)), *(Text(f"{n:,}") for n in counts))
    out.print(confusion)


# ----- predict ------------------------------------------------------------------------------


@click.command(
    context_settings=CONTEXT,
    epilog="Plain output: one line per text, LABEL<TAB>PROBABILITY<TAB>TEXT; with --top K the K best "
    "labels and their probabilities, best first, then the text (tabs and line breaks in it shown as "
    "\\t, \\n, \\r); with --explain each line is followed by an indented line of the heaviest tokens. "
    "--json: one object per line with text, label, probability, top (label and probability each), "
    "probabilities (every class) and, with --explain, attention ([token, weight] pairs). Every option "
    "can also be set in the environment as CHARLM_CLASSIFY_PREDICT_<OPTION>.",
)
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN_DIR")
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@click.option(
    "--data",
    "-d",
    metavar="PATH|-",
    help="Texts to classify instead of TEXT arguments: one per line (blank lines skipped), a column of a "
    ".csv/.tsv file, or a field of JSON lines (.jsonl, or any file with --text-field); - reads stdin.",
)
@click.option("--text-field", metavar="NAME", help="With --data: the column or JSON field holding the text.")
@click.option("--top", "-k", type=int, default=1, help="How many of the most likely labels to give per text.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text.")
@click.option(
    "--explain", is_flag=True, help="Give each token's attention weight (runs trained with --pooling attention)."
)
@_encoding_option
@run_weights_options
@names_the_environment
def predict(
    run: Path,
    texts: tuple[str, ...],
    data: Optional[str],
    text_field: Optional[str],
    top: int,
    as_json: bool,
    explain: bool,
    encoding_errors: str,
    checkpoint: str,
    device: str,
    threads: Optional[int],
) -> None:
    """Predict the labels of texts with a classifier run. Results go to stdout, notes to stderr."""
    one_process_only("classify predict")
    console = Console()
    require_threads(threads)
    if texts and data is not None:
        raise CharlmError("give the texts as arguments or with --data, not both")
    if text_field and data is None:
        raise CharlmError("--text-field goes with --data, the file of texts")
    if top < 1:
        raise OptionError("top", f"must be at least 1 (got {top})")
    for number, text in enumerate(texts, start=1):
        require_utf8(text, f"text {number}", "every text")
        if not text:
            raise CharlmError(f"text {number} is empty; every text needs at least one character")
    if data is not None:
        texts, skipped = _read_texts(data, text_field, encoding_errors)
        if skipped:
            console.note(f"skipped {skipped:,} blank line(s) of {'stdin' if data == '-' else data}")
    elif not texts:
        raise CharlmError("no texts to classify; give them as arguments, or --data FILE (--data - reads stdin)")
    classifier = _open(run, checkpoint, device, threads)
    classifier.check_request(top, explain)
    console.note(
        f"{classifier.checkpoint} checkpoint of {run}; {len(texts):,} text(s), {len(classifier.labels)} classes"
    )
    started = time.perf_counter()
    try:
        for start in range(0, len(texts), STREAM_TEXTS):
            for prediction in classifier.predict(texts[start : start + STREAM_TEXTS], top, explain):
                Console.write_text(_line(prediction, as_json))
    except BrokenPipeError:  # `| head`: the reader has gone; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    seconds = time.perf_counter() - started
    if data is not None:
        console.note(f"classified {len(texts):,} texts in {seconds:.1f} s ({len(texts) / max(seconds, 1e-9):,.0f}/s)")


def _read_texts(data: str, text_field: Optional[str], encoding_errors: str) -> tuple[list[str], int]:
    """The texts of --data and how many blank lines were skipped (plain one-per-line input)."""
    plain = text_field is None and (data == "-" or Path(data).suffix.lower() not in FIELD_EXTENSIONS)
    if data == "-":
        raw = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
        texts = read_unlabelled("-", text_field, encoding_errors, stdin=io.BytesIO(raw))
        return texts, (_line_count(raw) - len(texts)) if plain else 0
    texts = read_unlabelled(data, text_field, encoding_errors)
    return texts, (_file_line_count(Path(data)) - len(texts)) if plain else 0


def _line_count(raw: bytes) -> int:
    """Lines of a text split at "\\n" (a last line without one counts)."""
    return raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n") else 0)


def _file_line_count(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


def _line(prediction: Prediction, as_json: bool) -> str:
    """One text's result as printed: a JSON object, or tab-separated plain fields."""
    if as_json:
        return json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n"
    fields = [f"{label.translate(_FIELD_ESCAPES)}\t{p:.4f}" for label, p in prediction.top]
    line = "\t".join(fields) + "\t" + prediction.text.translate(_FIELD_ESCAPES) + "\n"
    if prediction.attention is not None:
        heaviest = sorted(prediction.attention, key=lambda pair: -pair[1])[:EXPLAIN_SHOWN]
        shown = ", ".join(f"{token!r} {weight:.3f}" for token, weight in heaviest)
        line += f"  attention: {shown} (the heaviest {len(heaviest)} of {len(prediction.attention):,} tokens)\n"
    return line
