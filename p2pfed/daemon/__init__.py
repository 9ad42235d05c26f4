"""The peer daemon: builds a ``Peer`` from a config file and runs it until done or signalled.

Theory of operation: ``prepare`` (``daemon.prepare``) does every check that can fail on
bad input *before* the node touches the network — config, identity key (permissions),
roster (signatures, expiry, rollback), data (loading, schema and validation report),
privacy ledger (integrity, budget) — so a bad installation stops with one clear sentence.
``serve`` (``daemon.serve``) then opens the libp2p host, composes the aggregator and the
peer from the builders in ``daemon.build``, and runs rounds; ``RoundReporter``
(``daemon.reporter``) turns each round into audit entries, a model version, metrics, a
log line and ``status.json`` (what ``p2pfed status`` shows). While it runs, the roster
file is watched and members push newer rosters to each other (``p2pfed.node.roster_sync``);
on an accepted change the round in progress is abandoned and the cohort rebuilt over the
new membership on the same transport. SIGINT/SIGTERM cancel the run: the current stage is
abandoned at its next await (trio delivers the cancel inside an exception group, which
``ended`` unwraps), the transport, ledger and files are closed on the way out, the last
completed round stays checkpointed, ``status.json`` says ``stopped`` with that round, and
the audit log's ``daemon_stop`` says why (the signal, finished, budget exhausted, error).
Importing the package loads neither torch nor libp2p: the node listens first, and builds
its model once it does (``daemon.serve``).
"""

from p2pfed.daemon.build import peer_addresses
from p2pfed.daemon.prepare import (
    AUDIT_FILE,
    Prepared,
    completed_round,
    noise_multiplier,
    parse_listen,
    prepare,
)
from p2pfed.daemon.reporter import RoundReporter, open_governance
from p2pfed.daemon.serve import run_until_signalled, serve
from p2pfed.governance.status_file import STATUS_FILE, read_status

__all__ = [
    "AUDIT_FILE",
    "STATUS_FILE",
    "Prepared",
    "RoundReporter",
    "completed_round",
    "noise_multiplier",
    "open_governance",
    "parse_listen",
    "peer_addresses",
    "prepare",
    "read_status",
    "run_until_signalled",
    "serve",
]
