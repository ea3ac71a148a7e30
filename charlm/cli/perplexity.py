"""charlm perplexity: score text with a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from charlm.cli.console import Console, print_line_scores, print_score
from charlm.cli.errors import (
    one_process_only,
)
from charlm.cli.options import CONTEXT, names_the_environment, require_threads, run_weights_options
from charlm.config import (
    ENCODING_ERRORS,
)
from charlm.errors import CharlmError
from charlm.hardware import (
    resolve_device,
    resolve_precision,
    set_threads,
)
from charlm.inference.scorer import Scorer
from charlm.inference.scoring import DEFAULT_LANES, DEFAULT_WINDOW
from charlm.text.inputs import read_data, read_data_lines


@click.command(
    context_settings=CONTEXT,
    epilog="Every option can also be set in the environment as "
    "CHARLM_PERPLEXITY_<OPTION>. Units are defined in the README.",
)
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN_DIR")
@click.option(
    "--data",
    "-d",
    metavar="PATH|-",
    help="Text to score: a file, a folder, or - for stdin. "
    "Default: the run's own test split, else its validation split.",
)
@click.option(
    "--split",
    type=click.Choice(["auto", "val", "test"]),
    default="auto",
    help="Which of the run's splits to score when --data is not given.",
)
@click.option("--per-line", is_flag=True, help="Score each line on its own, from a fresh state.")
@click.option("--field", metavar="NAME", help="With --per-line: read JSON lines and score this field of each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object, or one per line with --per-line).")
@click.option(
    "--lanes",
    type=int,
    help="Parallel lanes; each after the first is a context reset. 1: every token sees all before it. "
    f"Default: the run's validation lanes (--eval-batch-size, {DEFAULT_LANES} unless changed).",
)
@click.option(
    "--window", type=int, default=DEFAULT_WINDOW, help="Tokens per step of each lane (does not change the result)."
)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", help="bf16 is faster on some CPUs.")
@click.option(
    "--encoding-errors",
    type=click.Choice(ENCODING_ERRORS),
    default="strict",
    help="What to do with bytes that are not UTF-8 in --data.",
)
@run_weights_options
@names_the_environment
def perplexity(
    run: Path,
    data: Optional[str],
    split: str,
    per_line: bool,
    field: Optional[str],
    as_json: bool,
    lanes: Optional[int],
    window: int,
    precision: str,
    encoding_errors: str,
    checkpoint: str,
    device: str,
    threads: Optional[int],
) -> None:
    """Score text with a trained run: nats/token, perplexity, bits per char and per byte."""
    one_process_only("perplexity")
    console = Console()
    require_threads(threads)
    if field and not per_line:
        raise CharlmError("--field goes with --per-line")
    if per_line and data is None:
        raise CharlmError("--per-line needs --data, the lines to score")
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    set_threads(threads)
    # the text first: a mistake in --data is reported before the model is loaded
    lines = read_data_lines(data, field, encoding_errors) if per_line else None
    chunks = read_data(data, encoding_errors) if data is not None and not per_line else None
    if chunks is not None and not any(chunks):
        raise CharlmError(f"--data {data}: nothing to score, the text is empty; give some text")
    scorer = Scorer(run, device=torch_device, precision=precision, checkpoint=checkpoint, lanes=lanes, window=window)
    console.note(f"{scorer.checkpoint} checkpoint of {run}; {scorer.tokenizer.kind} tokenizer; {precision}")

    if lines is not None:
        scores = scorer.score_lines([text for _, text in lines])
        if as_json:
            for (number, _), score in zip(lines, scores, strict=True):
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
    method = (
        f"{score.lanes} lane{'s' if score.lanes != 1 else ''} ({resets} context reset{'s' if resets != 1 else ''}), "
        f"windows of {window}, state carried; the first token follows {context!r}"
    )
    if as_json:
        Console.write_text(json.dumps({"text": label, **score.to_dict(), "method": method}, allow_nan=False) + "\n")
    else:
        print_score(label, score, method)
    _warn_unknown(console, score.unknown)


def _warn_unknown(console: Console, unknown: int) -> None:
    if unknown:
        console.warn(
            f"{unknown:,} character(s) are not in the model's vocabulary; they were scored as the "
            "unknown symbol, which the model never predicts well"
        )
