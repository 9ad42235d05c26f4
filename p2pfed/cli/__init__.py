"""The ``p2pfed`` command.

Theory of operation: every module in ``p2pfed.cli.commands`` defines ``NAME``, ``HELP`` and
``register(parser)``; ``register`` adds arguments and sets ``func`` (called with the parsed
namespace, returning an exit code). Modules are found at start-up, so adding a command never
touches this file, and heavy imports (torch, libp2p) happen inside ``func`` only, keeping
``p2pfed --help`` fast. ``p2pfed NAME …`` imports only module ``NAME`` (a module's file name
is its ``NAME``), so one command never pays for another's imports.

Any ``P2PFedError`` (or a ``topologies`` error) ends the command with its one-sentence
message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Protocol, cast

from p2pfed import __version__
from p2pfed.errors import P2PFedError
from topologies.errors import TopologyError

# Command modules import torch, trio, libp2p and the project modules that load them inside
# their functions, on purpose: `p2pfed --help` imports every command module and must answer
# at once. import-linter still sees these imports (grimp reads function-level imports).

CommandFunc = Callable[[argparse.Namespace], int]


class CommandModule(Protocol):
    """What a module in ``p2pfed.cli.commands`` provides."""

    NAME: str
    HELP: str

    def register(self, parser: argparse.ArgumentParser) -> None:
        """Add arguments (or sub-commands) and set ``func``."""


def discover(package: ModuleType, only: str | None = None) -> list[CommandModule]:
    """The command modules of ``package`` (its public sub-modules), sorted by name.

    With ``only``, just the module of that name when there is one (a module's file name is
    its ``NAME``): running one command then imports no other command's dependencies.
    """
    infos = sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name)
    if only is not None and any(info.name == only for info in infos):
        infos = [info for info in infos if info.name == only]
    found = []
    for info in infos:
        if not info.name.startswith("_"):
            found.append(
                cast(CommandModule, importlib.import_module(f"{package.__name__}.{info.name}"))
            )
    return found


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    package: ModuleType,
    only: str | None = None,
) -> None:
    """Register every command module of ``package`` (or just ``only``) as a sub-command."""
    for module in discover(package, only):
        module.register(sub.add_parser(module.NAME, help=module.HELP, description=module.HELP))


def add_group(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Make ``parser`` a group of sub-commands that prints its help when given none."""

    def show_help(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=show_help)
    return parser.add_subparsers(dest=f"{parser.prog.replace(' ', '_')}_command", metavar="COMMAND")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per command module (or just ``only``)."""
    parser = argparse.ArgumentParser(
        prog="p2pfed",
        description="Serverless peer-to-peer federated learning for hospitals.",
    )
    parser.add_argument("--version", action="version", version=f"p2pfed {__version__}")
    from p2pfed.cli import commands  # here, not at the top: command modules import this one

    add_commands(add_group(parser), commands, only)
    return parser


def _sentences(group: BaseExceptionGroup[BaseException]) -> list[str] | None:
    """Our errors' sentences inside ``group`` (once each), or None if anything else is in it."""
    import trio  # only once a command has failed: start-up does not load trio

    found: list[str] = []
    leaves: list[BaseException] = [group]
    while leaves:
        exc = leaves.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(exc.exceptions)
        elif isinstance(exc, P2PFedError | TopologyError):
            if str(exc) not in found:
                found.append(str(exc))
        elif not isinstance(exc, trio.Cancelled):  # siblings cancelled by the failure
            return None
    return found or None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # A named command's parser alone: `p2pfed status` must not import every command's deps.
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args = parser.parse_args(argv)
    func = cast(CommandFunc, args.func)
    try:
        return func(args)
    except (P2PFedError, TopologyError) as exc:
        print(f"p2pfed: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # trio reports a failure inside a task as an exception group; ours are sentences.
        sentences = _sentences(group)
        if sentences is None:
            raise
        for sentence in sentences:
            print(f"p2pfed: error: {sentence}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("p2pfed: interrupted", file=sys.stderr)
        return 130
