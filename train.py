#!/usr/bin/env python3
"""Shim: `python train.py ARGS` is `charlm train ARGS`."""

import sys

from charlm.cli import cli

if __name__ == "__main__":
    cli(["train", *sys.argv[1:]], prog_name="charlm")
