"""What the commands share: context settings, the options of every command that loads a run,
where an option's value came from, and how an OptionError's field is spelled as a flag (and
the environment variable it came from)."""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import click

from charlm.config import DEVICES
from charlm.errors import CharlmError, OptionError

GROUP_CONTEXT = dict(help_option_names=["-h", "--help"], auto_envvar_prefix="CHARLM")
CONTEXT = dict(help_option_names=["-h", "--help"], show_default=True)

# Library fields set by an option of another name.
PARAMETER_OF = {"checkpoint_seconds": "checkpoint_every"}


def run_weights_options(command):
    """--checkpoint, --device and --threads, for a command that loads a trained run."""
    command = click.option("--threads", type=int, help="CPU threads. Default: one per available core.")(command)
    command = click.option(
        "--device", type=click.Choice(DEVICES), default="auto", help="auto picks CUDA when present."
    )(command)
    return click.option(
        "--checkpoint",
        type=click.Choice(["auto", "best", "last"]),
        default="auto",
        help="Which weights: auto takes best, else last.",
    )(command)


def require_threads(threads: Optional[int]) -> None:
    """Refuse --threads below 1 before any work (set_threads checks the upper bound later)."""
    if threads is not None and threads < 1:
        raise CharlmError(f"--threads must be at least 1 (got {threads})")


def was_given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def given_options(ctx: click.Context, names) -> set[str]:
    """Which of these parameters the user set, on the command line or in the environment."""
    return {name for name in names if was_given(ctx, name)}


def envvar_of(ctx: click.Context, name: Optional[str]) -> Optional[str]:
    """The environment variable an option's value came from, if it came from one."""
    if not name or ctx.get_parameter_source(name) != click.core.ParameterSource.ENVIRONMENT:
        return None
    return f"{ctx.auto_envvar_prefix}_{name}".upper()


def flag_of(option: str) -> str:
    """The flag a user types for a library field: lr -> --lr, checkpoint_seconds -> --checkpoint-every."""
    return "--" + PARAMETER_OF.get(option, option).replace("_", "-")


def option_message(exc: OptionError) -> str:
    """An OptionError as the command line says it: with the flag for the field."""
    return exc.spelled(flag_of(exc.option))


@contextlib.contextmanager
def naming_environment(ctx: click.Context):
    """A bad value set through CHARLM_<COMMAND>_<OPTION> is reported with that variable's
    name, since the user typed no such option. An error quoted inside a longer message (a
    damaged field of config.json) is about a file, not about the value the user set."""
    try:
        yield
    except OptionError as exc:
        envvar = None if exc.before else envvar_of(ctx, PARAMETER_OF.get(exc.option, exc.option))
        if envvar is None:
            raise
        raise exc.within(after=f" (set by the environment variable {envvar})") from exc


def names_the_environment(command):
    """Run a command's body under naming_environment (for commands that take no context)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with naming_environment(click.get_current_context()):
            return command(*args, **kwargs)

    return wrapper
