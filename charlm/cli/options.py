"""What the commands share: context settings, where an option's value came from, and the
naming of environment variables in errors."""

from __future__ import annotations

import contextlib
import re
from typing import Optional

import click

from charlm.errors import CharlmError

GROUP_CONTEXT = dict(help_option_names=["-h", "--help"], auto_envvar_prefix="CHARLM")
CONTEXT = dict(help_option_names=["-h", "--help"], show_default=True)


def was_given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def envvar_of(ctx: click.Context, name: Optional[str]) -> Optional[str]:
    """The environment variable an option's value came from, if it came from one."""
    if not name or ctx.get_parameter_source(name) != click.core.ParameterSource.ENVIRONMENT:
        return None
    return f"{ctx.auto_envvar_prefix}_{name}".upper()


@contextlib.contextmanager
def naming_environment(ctx: click.Context):
    """A bad value set through CHARLM_<COMMAND>_<OPTION> is reported with that variable's
    name, since the user typed no such option."""
    try:
        yield
    except CharlmError as exc:
        found = re.match(r"--([a-z0-9-]+)", str(exc))
        envvar = envvar_of(ctx, found.group(1).replace("-", "_")) if found else None
        if envvar is None:
            raise
        raise CharlmError(f"{exc} (set by the environment variable {envvar})") from None


