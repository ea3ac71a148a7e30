"""The one error mapper of the command line: every failure a user can fix becomes one line.

A CharlmError, a click usage error, an OSError or Ctrl-C ends the same way: one line on
stderr ("charlm: error: ..."), a non-zero exit, no traceback. CHARLM_DEBUG=1 prints the
full traceback chain behind that line, for bug reports. Under torchrun only rank 0 speaks
for mistakes every process makes alike.
"""

from __future__ import annotations

import sys
from typing import Optional

import click

from charlm.cli.console import Console
from charlm.cli.options import envvar_of
from charlm.errors import CharlmError
from charlm.training import distributed

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CharlmGroup(click.Group):
    """A click group that reports every user error as one line and an exit status."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        rank = torchrun_rank()
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
                envvar = envvar_of(ctx, getattr(param, "name", None)) if param is not None else None
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


def torchrun_rank() -> Optional[int]:
    """This process's rank when torchrun started it, else None."""
    try:
        rank, _, size, _ = distributed.launched_world()
    except CharlmError:
        return None
    return rank if size > 1 else None


def one_process_only(command: str) -> None:
    """Under torchrun, refuse a command that is not distributed: once, from rank 0."""
    rank = torchrun_rank()
    if rank is None:
        return
    if rank:
        sys.exit(EXIT_ERROR)
    raise CharlmError(f"charlm {command} runs in one process; start it without torchrun (only train is distributed)")


