"""charlm classify: the command group of sequence classification (train, evaluate, predict).

`train` (classify_train.py) makes a classifier run from labelled texts; `evaluate` and
`predict` (classify_use.py) use one. Each is a click command of its own, joined here.
"""

from __future__ import annotations

import click

from charlm.cli.classify_train import train
from charlm.cli.options import GROUP_CONTEXT


@click.group(context_settings=GROUP_CONTEXT, no_args_is_help=True)
def classify() -> None:
    """Classify texts with a recurrent encoder: train a classifier, evaluate it, predict labels."""


classify.add_command(train)
