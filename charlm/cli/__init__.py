"""The command line: a click group joined from one module per command.

Each command parses its options, calls the library and prints; cli/errors.py turns every
user mistake into one line on stderr and an exit status. Options can also come from the
environment as CHARLM_<COMMAND>_<OPTION> (e.g. CHARLM_TRAIN_DEVICE=cpu), which --help names.
"""

from __future__ import annotations

import click

from charlm import __version__
from charlm.cli.classify import classify
from charlm.cli.errors import CharlmGroup
from charlm.cli.generate import generate
from charlm.cli.options import GROUP_CONTEXT  # sets the prefix; each command reads CHARLM_<COMMAND>_<OPTION>
from charlm.cli.perplexity import perplexity
from charlm.cli.serve import serve
from charlm.cli.train import train


@click.group(cls=CharlmGroup, context_settings=GROUP_CONTEXT, no_args_is_help=True)
@click.version_option(__version__, "-V", "--version", prog_name="charlm")
def cli() -> None:
    """charlm: train recurrent language models on any text, generate from them, score text."""


cli.add_command(train)
cli.add_command(generate)
cli.add_command(perplexity)
cli.add_command(classify)
cli.add_command(serve)


def main() -> None:
    cli(prog_name="charlm")
