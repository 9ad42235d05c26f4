"""``p2pfed bench NAME``: run a benchmark and print JSON."""

from __future__ import annotations

import argparse

from p2pfed import bench
from p2pfed.cli import add_commands, add_group

NAME = "bench"
HELP = "Run a benchmark (transport, secagg, privacy, sim, allreduce, ...) and print JSON."


def register(parser: argparse.ArgumentParser) -> None:
    """Add one sub-command per module of ``p2pfed.bench``."""
    add_commands(add_group(parser), bench)
