"""The one error mapper of the command line: every failure a user can fix becomes one line.

A CharlmError, a click usage error, an OSError or Ctrl-C ends the same way: one line on
stderr ("charlm: error: ..."), a non-zero exit, no traceback. CHARLM_DEBUG=1 prints the
full traceback chain behind that line, for bug reports. Under torchrun only rank 0 speaks
for mistakes every process makes alike.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import NoReturn, Optional

import click

from charlm.cli.console import Console
from charlm.cli.options import envvar_of, option_message
from charlm.errors import CharlmError, OptionError
from charlm.training import distributed

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
DEBUG_VAR = "CHARLM_DEBUG"
RANK_ZERO_GRACE_S = 20.0


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
                leave_to_rank_zero(exc.exit_code)
            hint = ""
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                hint = f" (see '{ctx.command_path} --help')"
                param = getattr(exc, "param", None)
                envvar = envvar_of(ctx, getattr(param, "name", None)) if param is not None else None
                if envvar:
                    hint = f" (set by the environment variable {envvar})" + hint
            _fail(console, exc.format_message().replace("\n", " ") + hint, exc, exc.exit_code)
        except (click.Abort, KeyboardInterrupt) as exc:
            _fail(console, "interrupted", exc, EXIT_INTERRUPTED)
        except OptionError as exc:
            _fail(console, option_message(exc), exc, EXIT_ERROR)
        except CharlmError as exc:
            _fail(console, str(exc), exc, EXIT_ERROR)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            _fail(console, f"{exc.strerror or exc}{where}", exc, EXIT_ERROR)
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
        leave_to_rank_zero(EXIT_ERROR)
    raise CharlmError(f"charlm {command} runs in one process; start it without torchrun (only train is distributed)")


def leave_to_rank_zero(status: int) -> NoReturn:
    """Exit a rank other than 0 that found the mistake rank 0 reports, but not first.

    torchrun stops every worker as soon as one exits with an error; a silent rank that
    exited at once could have rank 0 killed before it wrote its line. Waiting lets rank 0
    speak and exit first (torchrun then ends this one); the wait is bounded in case rank 0
    never gets there."""
    time.sleep(RANK_ZERO_GRACE_S)
    sys.exit(status)


def _fail(console: Console, message: str, exc: BaseException, status: int) -> NoReturn:
    """Say the one line; with CHARLM_DEBUG=1, the whole chain behind it; exit."""
    console.error(message)
    if os.environ.get(DEBUG_VAR, "") not in ("", "0"):
        sys.stderr.write(debug_report(exc))
        sys.stderr.flush()
    sys.exit(status)


def debug_report(exc: BaseException) -> str:
    """Every exception behind an error, innermost first, as Python prints a chain.

    A `raise CharlmError(...) from None` hides its cause only from Python's own display
    (it is kept as __context__), so that users see one line; a developer who asks for the
    chain wants exactly what was hidden, so it is shown here, marked as hidden."""
    chain: list[BaseException] = []
    link: Optional[BaseException] = exc
    while link is not None and all(link is not seen for seen in chain):
        chain.append(link)
        link = link.__cause__ if link.__cause__ is not None else link.__context__
    parts: list[str] = []
    inner: Optional[BaseException] = None
    for item in reversed(chain):
        if inner is not None:
            if item.__cause__ is inner:
                words = "The above exception was the direct cause of the following exception:"
            elif item.__suppress_context__:
                words = "During handling of the above exception, another exception occurred (hidden by 'from None'):"
            else:
                words = "During handling of the above exception, another exception occurred:"
            parts.append(f"\n{words}\n\n")
        parts.extend(traceback.format_exception(type(item), item, item.__traceback__, chain=False))
        inner = item
    return "".join(parts)
