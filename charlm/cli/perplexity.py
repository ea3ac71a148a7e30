"""charlm perplexity: score text with a trained run (and, with --dynamic, adapting to it as well)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from charlm.cli.console import Console, print_line_scores, print_score, print_scores
from charlm.cli.errors import (
    one_process_only,
)
from charlm.cli.options import (
    CONTEXT,
    envvar_of,
    given_options,
    names_the_environment,
    require_threads,
    run_weights_options,
)
from charlm.config import (
    ENCODING_ERRORS,
)
from charlm.errors import CharlmError
from charlm.hardware import (
    resolve_device,
    resolve_precision,
    set_threads,
)
from charlm.inference.dynamic import (
    DEFAULT_DYNAMIC_DECAY,
    DEFAULT_DYNAMIC_LR,
    DEFAULT_DYNAMIC_STEP,
    DEFAULT_DYNAMIC_WINDOW,
    DYNAMIC_STEPS,
    Comparison,
    DynamicSettings,
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
    "--dynamic",
    is_flag=True,
    help="Also score the text by dynamic evaluation: a copy of the weights takes a step on each window "
    "after scoring it, so it adapts to the text as it goes (the run is not changed). Reported beside "
    "the static figure.",
)
@click.option(
    "--dynamic-lr",
    type=float,
    default=DEFAULT_DYNAMIC_LR,
    help="With --dynamic: the step size of each adaptation step (0: no adaptation, the static figure).",
)
@click.option(
    "--dynamic-decay",
    type=float,
    default=DEFAULT_DYNAMIC_DECAY,
    help="With --dynamic: after each step the weights move this fraction of the way back to the trained "
    "ones, in [0, 1] (1: no adaptation carries over).",
)
@click.option(
    "--dynamic-window",
    type=int,
    default=DEFAULT_DYNAMIC_WINDOW,
    help="With --dynamic: tokens of each lane per adaptation step (smaller adapts more often, costs more). "
    "--window is the static figure's.",
)
@click.option(
    "--dynamic-step",
    type=click.Choice(DYNAMIC_STEPS),
    default=DEFAULT_DYNAMIC_STEP,
    help="With --dynamic: rms divides the gradient by its running root mean square; sgd takes it as is "
    "(and wants a far larger --dynamic-lr).",
)
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
    dynamic: bool,
    dynamic_lr: float,
    dynamic_decay: float,
    dynamic_window: int,
    dynamic_step: str,
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
    settings = _dynamic_settings(dynamic, per_line, dynamic_lr, dynamic_decay, dynamic_window, dynamic_step)
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

    if settings is not None:
        text_label = "stdin" if data == "-" else data
        compared = scorer.score_dynamic(chunks, settings, split, label=text_label)
        if data is None:
            compared.label = f"{compared.label} split of {run}"
        _report_comparison(compared, _method(scorer, compared.static, window), as_json)
        _warn_unknown(console, compared.static.unknown)
        return

    if data is None:
        label, score = scorer.score_split(split)
        label = f"{label} split of {run}"
    else:
        label = "stdin" if data == "-" else data
        score = scorer.score_text(chunks)
    method = _method(scorer, score, window)
    if as_json:
        Console.write_text(json.dumps({"text": label, **score.to_dict(), "method": method}, allow_nan=False) + "\n")
    else:
        print_score(label, score, method)
    _warn_unknown(console, score.unknown)


def _dynamic_settings(
    dynamic: bool, per_line: bool, lr: float, decay: float, window: int, step: str
) -> Optional[DynamicSettings]:
    """The checked settings of --dynamic (None without it), before any work is done."""
    if not dynamic:
        ctx = click.get_current_context()
        given = sorted(given_options(ctx, ("dynamic_lr", "dynamic_decay", "dynamic_window", "dynamic_step")))
        if given:
            envvar = envvar_of(ctx, given[0])
            where = f" (set by the environment variable {envvar})" if envvar else ""
            raise CharlmError(f"--{given[0].replace('_', '-')}{where} goes with --dynamic; add --dynamic")
        return None
    if per_line:
        raise CharlmError("--dynamic cannot be combined with --per-line: it adapts across a whole text; drop one")
    return DynamicSettings(lr=lr, decay=decay, window=window, step=step).validate()


def _method(scorer: Scorer, score, window: int) -> str:
    context = scorer.tokenizer.decode([scorer.context_id])
    resets = score.context_resets
    return (
        f"{score.lanes} lane{'s' if score.lanes != 1 else ''} ({resets} context reset{'s' if resets != 1 else ''}), "
        f"windows of {window}, state carried; the first token follows {context!r}"
    )


def _report_comparison(compared: Comparison, method: str, as_json: bool) -> None:
    """The static and dynamic figures of one text, side by side (or one JSON object)."""
    settings, static, dynamic = compared.settings, compared.static, compared.dynamic
    if as_json:
        result = {
            "text": compared.label,
            "static": {**static.to_dict(), "seconds": round(compared.static_seconds, 3)},
            "dynamic": {
                **dynamic.to_dict(),
                "seconds": round(compared.dynamic_seconds, 3),
                "settings": settings.to_dict(),
            },
            "dynamic_gain_nats_per_token": compared.gain,
            "method": method,
        }
        Console.write_text(json.dumps(result, allow_nan=False) + "\n")
        return
    share = f" ({abs(compared.gain) / static.loss:.1%})" if static.loss else ""
    change = f"{abs(compared.gain):.4f} nats/token{share} {'below' if compared.gain >= 0 else 'above'} static"
    print_scores(
        compared.label,
        [("static", static), ("dynamic", dynamic)],
        [
            f"static: the trained weights as they are; {compared.static_seconds:.1f} s",
            f"dynamic (adapted while scoring: {settings.describe()}): each window is scored, then a copy "
            "of the weights takes one step on it and decays toward the trained weights; the run is not "
            f"changed; {change}; {compared.dynamic_seconds:.1f} s",
            f"method: {method}",
        ],
    )


def _warn_unknown(console: Console, unknown: int) -> None:
    if unknown:
        console.warn(
            f"{unknown:,} character(s) are not in the model's vocabulary; they were scored as the "
            "unknown symbol, which the model never predicts well"
        )
