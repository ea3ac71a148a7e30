"""charlm generate: sample text from a trained run, streamed to stdout."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Optional

import click
import torch

from charlm.cli.console import Console
from charlm.cli.errors import (
    one_process_only,
)
from charlm.cli.options import CONTEXT, names_the_environment, require_threads, run_weights_options
from charlm.config import (
    MAX_SEED,
    SampleConfig,
)
from charlm.errors import CharlmError
from charlm.hardware import (
    resolve_device,
    set_threads,
)
from charlm.inference.generate import MAX_SAMPLES, MAX_TOKENS, Generator, check_counts
from charlm.text.inputs import MAX_PROMPT_BYTES, read_prompt_file, require_utf8


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


@click.command(
    context_settings=CONTEXT,
    epilog="Every option can also be set in the environment as "
    "CHARLM_GENERATE_<OPTION>, e.g. CHARLM_GENERATE_TEMPERATURE=0.5.",
)
@click.argument("run", type=click.Path(path_type=Path), metavar="RUN_DIR")
@click.option("--prompt", "-p", default="", help="Text to continue; it is printed before the continuation.")
@click.option(
    "--prompt-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Read the prompt from a file (UTF-8, at most {MAX_PROMPT_BYTES >> 20} MiB).",
)
@click.option(
    "--max-tokens", "-n", type=int, default=500, help=f"Tokens to generate per sample (at most {MAX_TOKENS:,})."
)
@click.option("--temperature", type=float, default=SampleConfig.temperature, help="0 is greedy; higher is wilder.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token (same as --temperature 0).")
@click.option("--top-k", type=int, help="Sample only from the k most likely tokens (clamped to the vocabulary).")
@click.option("--top-p", type=float, help="Sample only from the smallest set of tokens with at least this probability.")
@click.option(
    "--num-samples",
    "-N",
    type=int,
    default=1,
    help=f"Samples to make, together as one batch (at most {MAX_SAMPLES:,}, and what fits in memory).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED - 1),
    help="Random seed: the same seed gives the same text on the same machine and device.",
)
@click.option(
    "--stop",
    multiple=True,
    metavar="TEXT",
    help=r"End a sample when this text appears (it is not printed); repeatable. \n, \t are read as escapes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per sample instead of plain text.")
@run_weights_options
@names_the_environment
def generate(
    run: Path,
    prompt: str,
    prompt_file: Optional[Path],
    max_tokens: int,
    temperature: float,
    greedy: bool,
    top_k: Optional[int],
    top_p: Optional[float],
    num_samples: int,
    seed: Optional[int],
    stop: tuple[str, ...],
    as_json: bool,
    checkpoint: str,
    device: str,
    threads: Optional[int],
) -> None:
    """Generate text from a trained run. Text streams to stdout; notices go to stderr."""
    one_process_only("generate")
    console = Console()
    if prompt_file is not None:
        if prompt:
            raise CharlmError("give --prompt or --prompt-file, not both")
        prompt = read_prompt_file(prompt_file)
    require_utf8(prompt, "--prompt", "the prompt")
    check_counts(num_samples, max_tokens)  # before loading the model; its memory is checked after
    require_threads(threads)
    sample_config = SampleConfig(temperature=0.0 if greedy else temperature, top_k=top_k, top_p=top_p)
    sample_config.validate()
    stops = [_unescape(s) for s in stop]
    if any(not s for s in stops):
        raise CharlmError("--stop needs some text")
    for text in stops:
        require_utf8(text, "--stop", "the stop text")

    torch_device = resolve_device(device)
    set_threads(threads)
    generator = Generator(run, device=torch_device, checkpoint=checkpoint)
    if seed is None:
        seed = int(torch.seed() % (1 << 31))
    # the batch's memory is checked here, before anything is printed; the text is made below
    result = generator.generate(
        prompt, max_tokens, num_samples=num_samples, config=sample_config, seed=seed, stop=stops
    )
    unknown = generator.unknown_in_prompt(prompt)
    if unknown:
        shown = ", ".join(_show_char(ch) for ch in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        console.warn(f"the model never saw {len(unknown)} prompt character(s): {shown}; they are left out")
    console.note(f"{generator.checkpoint} checkpoint of {run}; seed {seed}")

    if as_json:
        for index, sample in enumerate(result.samples):
            record = {
                "sample": index,
                "prompt": prompt,
                "text": sample.text,
                "tokens": sample.tokens,
                "finish": sample.finish,
                "seed": seed,
            }
            Console.write_text(json.dumps(record, ensure_ascii=False) + "\n")
        return

    # The first sample streams live; the others are made alongside it and printed after it.
    for index in range(num_samples):
        if num_samples > 1:
            Console.write_text(("\n" if index else "") + f"--- sample {index + 1} of {num_samples} ---\n")
        Console.write_text(prompt)
        if index == 0:
            for sample, text in result:
                if sample == 0:
                    Console.write_text(text)
        else:
            Console.write_text(result.samples[index].text)
        if not (prompt + result.samples[index].text).endswith("\n"):
            Console.write_text("\n")
