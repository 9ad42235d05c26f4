"""``p2pfed run --config FILE``: the peer daemon."""

from __future__ import annotations

import argparse

NAME = "run"
HELP = "Run the peer daemon for one institution (stops on SIGINT/SIGTERM)."


def register(parser: argparse.ArgumentParser) -> None:
    """Add the arguments."""
    parser.add_argument("--config", required=True, help="the institution's config.toml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check everything, then run rounds until done, out of budget, or signalled.

    The config is checked first, before torch, trio or libp2p load: an operator's typo or a
    missing file is refused at once.
    """
    import logging

    from p2pfed.config import load_config

    config = load_config(args.config)

    from p2pfed.daemon.memory import return_freed_memory

    return_freed_memory()  # before the model is built: freed rounds' memory is given back

    import trio

    from p2pfed.daemon import completed_round, prepare, run_until_signalled
    from p2pfed.daemon.prepare import with_privacy_plan
    from p2pfed.governance.logs import remove_logging, setup_logging

    setup_logging(config.node.log_level.upper(), json_format=config.node.log_json)

    said = logging.getLogger("p2pfed.run")
    said.setLevel(logging.INFO)  # these lines show whatever [node] log_level says

    def say(line: str) -> None:
        """A line for the operator: on stdout, or with ``log_json`` a record like the rest."""
        if config.node.log_json:
            said.info("%s", line)
        else:
            print(line, flush=True)

    try:
        # The ledger and σ once listening (daemon.serve): the accountants take seconds.
        prepared = prepare(config, plan_privacy=False)
        done = completed_round(prepared.state_dir)
        if done >= config.rounds.rounds - 1:
            with_privacy_plan(prepared)  # a missing or altered ledger is refused all the same
            say(
                f"{config.node.name}: already finished: all {config.rounds.rounds} rounds are done "
                f"(checkpoint at round {done}); nothing to run"
            )
            return 0
        say(prepared.report.summary())
        status = trio.run(run_until_signalled, prepared)
        state = status.get("state", "stopped")
        say(
            f"{config.node.name}: {state} after round {status.get('completed_round', -1)}"
            + (f"; {status['error']}" if "error" in status else "")
        )
        return 0 if state in ("finished", "stopped") else 1
    finally:
        # The process's logging is ours only while the command runs, so an in-process caller
        # (a test) keeps no handler bound to a stream it has since closed.
        remove_logging()
