#!/usr/bin/env python3
"""Shim: `python generate.py ARGS` is `charlm generate ARGS`."""

import sys

from charlm.cli import cli

if __name__ == "__main__":
    cli(["generate", *sys.argv[1:]], prog_name="charlm")
