"""Running the node: the transport, the cohort of each roster in force, and a clean stop.

Theory of operation: ``serve`` opens the libp2p host first, so the node listens, and
authenticates whoever dials it against the roster, within moments of ``p2pfed run``, and
``status.json`` says ``starting`` with the addresses it listens on. torch and the model
load next, in a worker thread (``load_trainer``), seconds later; until then the node runs
no protocol but the transport's own, so a member probing it sees it as not answering yet,
exactly as a member still booting, and waits for it (or, past the start-up wait, runs its
rounds without it; the node catches up when it is ready). A model that does not fit the
data stops the node before its audit log records a start. Then ``serve`` opens what
outlives one cohort (governance, metrics server, privacy ledger, the reporter) in an exit
stack, so each is closed however the run ends, and ``status.json`` is written last. A
``CohortRunner`` serves roster exchanges in the background and runs the cohort of the
roster in force; when a newer roster is accepted the round in progress is abandoned and
the cohort rebuilt over the new membership on the same transport. A cancel (a signal,
delivered by trio inside an exception group) is recorded by ``ended`` before the exit
stack writes the final status and the audit log's ``daemon_stop``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any

import trio

from p2pfed import __version__
from p2pfed.daemon.build import (
    Cohort,
    build_peer,
    build_trainer,
    build_transport,
    class_count,
    cohort_of,
)
from p2pfed.daemon.prepare import Prepared, with_privacy_plan
from p2pfed.daemon.reporter import RoundReporter, metrics_config, open_governance
from p2pfed.errors import BudgetExceededError
from p2pfed.governance.metrics import serve_if_enabled
from p2pfed.governance.recorder import GovernanceRecorder
from p2pfed.governance.status_file import write_status
from p2pfed.identity import RosterError
from p2pfed.lifecycle import ended, stop_reason
from p2pfed.node.roster_sync import LiveRoster, RosterAnnouncer, RosterChange, enforce, run_unless
from p2pfed.privacy import PrivacyLedger

if TYPE_CHECKING:  # torch: loaded once the node listens (``load_trainer``)
    from p2pfed.node.peer import Peer
    from p2pfed.training.trainer import LocalTrainer
    from p2pfed.transport.libp2p import Libp2pTransport

log = logging.getLogger("p2pfed.daemon")


async def serve(prepared: Prepared, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the node until its rounds are done, the budget is spent, or it is cancelled.

    ``status`` (filled in, and also returned) survives a cancellation, so the caller still
    learns the last completed round and why the run ended.
    """
    config, roster = prepared.config, prepared.gate.roster
    status = {} if status is None else status
    status |= {
        "name": config.node.name,
        "peer_id": prepared.identity.peer_id,
        "consortium": roster.consortium_id,
        "roster_version": roster.version,
        "rounds": config.rounds.rounds,
        "state": "starting",
    }
    try:
        async with build_transport(prepared) as transport:
            status["listen"] = list(transport.listen_addrs)
            write_status(prepared.state_dir, status)  # `p2pfed status` answers from here on
            prepared, trainer = await load_trainer(prepared)
            await run_node(prepared, status, trainer, transport)
    except BaseException as exc:
        # Before the status is written for the last time (here, or by run_node's exit
        # stack). trio delivers a cancel inside an exception group, which
        # ``except trio.Cancelled`` would not see.
        ended(status, exc)
        write_status(prepared.state_dir, status)
        raise
    return status


async def load_trainer(prepared: Prepared) -> tuple[Prepared, LocalTrainer]:
    """The privacy plan, then torch, the model and its trainer, in a worker thread.

    The node listens meanwhile. The ledger is checked and σ planned first if ``prepare``
    left them (``with_privacy_plan``: the accountants take seconds to load). Not abandoned on
    cancel (the project's trio stubs predate that argument): a stop during the load waits
    for it.
    """
    return await trio.to_thread.run_sync(_load, prepared)


def _load(prepared: Prepared) -> tuple[Prepared, LocalTrainer]:
    if not prepared.privacy_planned:
        prepared = with_privacy_plan(prepared)
    import torch

    torch.set_num_threads(1)  # peers share the machine's cores with their neighbours
    trainer = build_trainer(prepared)
    return prepared, trainer


async def run_node(
    prepared: Prepared,
    status: dict[str, Any],
    trainer: LocalTrainer,
    transport: Libp2pTransport,
) -> None:
    """Open governance and the ledger, then run the cohorts of successive rosters."""
    # Everything opened here is closed (in reverse order) however the run ends.
    cleanup = contextlib.ExitStack()
    with cleanup:
        recorder = open_recorder(prepared, status, cleanup)
        ledger = open_ledger(prepared, cleanup)
        reporter = RoundReporter(prepared, status, recorder, ledger, trainer.layout)
        cleanup.callback(reporter.write)
        reporter.write()
        try:
            await CohortRunner(prepared, reporter, ledger, trainer, transport).run()
        except BaseException as exc:
            ended(status, exc)  # before the exit stack writes status.json and daemon_stop
            raise


def open_recorder(
    prepared: Prepared, status: dict[str, Any], cleanup: contextlib.ExitStack
) -> GovernanceRecorder:
    """Governance with its ``daemon_start`` written, and the metrics server if enabled.

    The ``daemon_stop`` (with the reason ``status`` holds by then) is left to ``cleanup``.
    """
    roster = prepared.gate.roster
    recorder = open_governance(prepared, roster.consortium_id, class_count(prepared))
    cleanup.callback(lambda: recorder.stop(reason=stop_reason(status)))
    recorder.start(
        software_version=__version__,
        consortium=roster.consortium_id,
        roster_version=roster.version,
        roster_digest=roster.digest(),
    )
    assert recorder.metrics is not None  # open_governance always attaches metrics
    metrics_server = serve_if_enabled(recorder.metrics, metrics_config(prepared))
    if metrics_server is not None:
        cleanup.callback(metrics_server.close)
    return recorder


def open_ledger(prepared: Prepared, cleanup: contextlib.ExitStack) -> PrivacyLedger | None:
    """The privacy ledger, checked against its anchors (None with ``[privacy] mode = "off"``)."""
    config, p = prepared.config, prepared.config.privacy
    if p.mode == "off":
        return None
    ledger = PrivacyLedger(
        config.path(p.ledger),
        p.epsilon_budget,
        p.delta,
        config.accountant,
        anchors=prepared.ledger_anchors,
    )
    cleanup.callback(ledger.close)
    return ledger


class CohortRunner:
    """The node on one transport: the cohort of each roster in force, one after another."""

    def __init__(
        self,
        prepared: Prepared,
        reporter: RoundReporter,
        ledger: PrivacyLedger | None,
        trainer: LocalTrainer,
        transport: Libp2pTransport,
    ) -> None:
        self.prepared = prepared
        self.reporter = reporter
        self.ledger = ledger
        self.trainer = trainer
        self.transport = transport
        self._changed = trio.Event()
        self._previous: Cohort | None = None
        live = LiveRoster(prepared.gate, prepared.config.path(prepared.config.network.roster))
        self.announcer = RosterAnnouncer(transport, live, self.on_change)

    async def on_change(self, change: RosterChange) -> None:
        """A newer roster is in force: record it and end the current cohort's rounds."""
        # Within one round: removed members are cut off now (the gate already
        # refuses them), and the rounds restart over the new membership.
        self.reporter.roster_changed(change)
        self._changed.set()  # first: the new cohort's services are up within moments
        await enforce(change, self.transport)

    async def run(self) -> None:
        """Serve roster exchanges and run cohorts until one runs to its end."""
        async with trio.open_nursery() as background:
            background.start_soon(self.announcer.run)
            rebuilt = False
            while True:
                self._changed = trio.Event()
                if await self.one_membership(self._changed, rebuilt):
                    break
                rebuilt = True
            background.cancel_scope.cancel()

    async def one_membership(self, wake: trio.Event, rebuilt: bool) -> bool:
        """Build the cohort of the roster in force and run it; True when the node is done."""
        prepared = self.prepared
        cohort = cohort_of(prepared)
        if cohort is None:
            self.reporter.removed(prepared.identity.peer_id, prepared.gate.roster.version)
            return True
        peer = build_peer(
            prepared, self.transport, cohort, self.trainer, self.ledger, self.reporter
        )
        if self._previous is not None:  # the rounds it ran before ours certify models too
            old = self._previous
            peer.policy.handover.follow(old.roster.version, frozenset(old.peers), old.signer)
        self._previous = cohort
        assert peer.guard is not None
        peer.guard()  # an expiring roster is in status and warned about from the start
        if rebuilt:
            peer.renumber()
        self.reporter.running(peer, self.transport, cohort.roster.version)
        if await run_unless(wake, lambda: self.run_rounds(peer, cohort, rebuilt)):
            return True
        peer.abandon()
        log.warning(
            "roster version %d in force: round %d abandoned, rebuilding the cohort",
            prepared.gate.roster.version,
            peer.next_round - 1,
        )
        return False

    async def run_rounds(self, peer: Peer, cohort: Cohort, rebuilt: bool) -> None:
        """The configured rounds; how they ended goes to the reporter."""
        rounds = self.prepared.config.rounds
        if rebuilt:
            behind = await self.announcer.wait_in_step(cohort.peers, rounds.round_timeout_s)
            if behind:
                log.warning(
                    "starting roster version %d's rounds while %s still hold an older version",
                    cohort.roster.version,
                    ", ".join(behind),
                )
        try:
            await peer.run(
                rounds.rounds,
                self.reporter.on_report,
                startup_timeout=rounds.round_timeout_s,
                min_peers=rounds.min_peers,
            )
        except BudgetExceededError as exc:
            self.reporter.budget_exhausted(exc)
        except RosterError as exc:
            if not self.reporter.roster_expired(exc):
                raise
        else:
            self.reporter.finished()
        self.reporter.rounds_over(peer)


async def run_until_signalled(prepared: Prepared) -> dict[str, Any]:
    """``serve`` that stops cleanly on SIGINT or SIGTERM; returns the final status."""
    status: dict[str, Any] = {}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    log.info("received %s; shutting down", name)
                    status["stop_reason"] = f"signal {name}"
                    nursery.cancel_scope.cancel()
                    return

            async def work() -> None:
                await serve(prepared, status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(work)
    return status
