"""charlm classify: the command group of sequence classification (train, evaluate, predict).

`train` (classify_train.py) makes a classifier run from labelled texts; `evaluate` and
`predict` (classify_use.py) use one. Each is a click command of its own, joined here.
"""

from __future__ import annotations

import click

from charlm.cli.classify_train import train
from charlm.cli.classify_use import evaluate, predict


# no auto_envvar_prefix of its own: the nested prefix CHARLM_CLASSIFY_<COMMAND>_<OPTION> keeps
# classify train's variables apart from charlm train's
@click.group(context_settings=dict(help_option_names=["-h", "--help"]), no_args_is_help=True)
def classify() -> None:
    """Classify texts with a recurrent encoder: train a classifier, evaluate it, predict labels."""


classify.add_command(train)
classify.add_command(evaluate)
classify.add_command(predict)
