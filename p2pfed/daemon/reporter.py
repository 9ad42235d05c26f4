"""What the daemon tells the world: ``status.json``, the audit log, metrics and log lines.

Theory of operation: ``open_governance`` opens the node's audit log (setting aside a line
torn by a crash), model registry, drift monitor and metrics as one ``GovernanceRecorder``.
``RoundReporter`` is the one object the running daemon reports through: a roster change,
the node's removal, the cohort starting, each round's ``RoundReport`` (audit entries,
registry version, drift alerts, metrics, the status fields and one log line) and how the
rounds ended. It writes into the caller's status dict, which outlives a cancellation (the
signal watcher and ``ended`` record the stop in it), and writes ``status.json`` whenever
a change must be visible at once.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfed.daemon.prepare import AUDIT_FILE, Prepared
from p2pfed.durable import atomic_write
from p2pfed.errors import BudgetExceededError, DataError, IntegrityError, ReasonCode
from p2pfed.governance.audit import AuditLog, ProblemKind, verify_log
from p2pfed.governance.drift import DriftConfig, DriftMonitor, MetricRule
from p2pfed.governance.metrics import MetricsConfig, NodeMetrics
from p2pfed.governance.models import MODELS_DIR, ModelRegistry, tensors_from_flat
from p2pfed.governance.recorder import DPRecord, GovernanceRecorder
from p2pfed.governance.status_file import write_status
from p2pfed.identity import Identity, RosterError
from p2pfed.lifecycle import expiry_guard, roster_expired
from p2pfed.node.certificates import CommitCertificate
from p2pfed.node.liveness import Waiting
from p2pfed.node.report import RoundReport
from p2pfed.node.roster_sync import RosterChange
from p2pfed.node.sync import SyncRefusal, weights_digest
from p2pfed.privacy import PrivacyLedger

if TYPE_CHECKING:  # torch: the reporter exists (status.json) before the model is built
    from collections.abc import Callable

    from p2pfed.node.peer import Peer
    from p2pfed.training.params import ParameterLayout
    from p2pfed.transport.libp2p import Libp2pTransport

log = logging.getLogger("p2pfed.daemon")

WAIT_LOG_INTERVAL_S = 30.0
"""A member that keeps waiting for the same reason logs it at most this often."""


def open_audit_log(path: Path, identity: Identity, salt: bytes) -> AuditLog:
    """Open the node's audit log; a line torn by a crash mid-append is set aside first.

    A torn last line was never a complete signed entry, so removing it loses no record;
    its bytes are kept in ``audit.jsonl.torn`` for the auditors. Any other problem stops the
    node (``IntegrityError``): an audit log is never repaired silently.
    """
    try:
        return AuditLog(path, identity, salt=salt)
    except IntegrityError:
        report = verify_log(path)
        if report.problem is None or report.problem.kind is not ProblemKind.TORN:
            raise
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        with (path.parent / (path.name + ".torn")).open("ab") as aside:
            aside.write(data[keep:] + b"\n")
        atomic_write(path, data[:keep], 0o600)
        log.warning("audit log: set aside a line torn by a crash (%d bytes)", len(data) - keep)
        return AuditLog(path, identity, salt=salt)


def open_governance(prepared: Prepared, consortium: str, classes: int) -> GovernanceRecorder:
    """Audit log, model registry, drift monitor and metrics for this node."""
    g = prepared.config.governance
    audit = open_audit_log(prepared.state_dir / AUDIT_FILE, prepared.identity, prepared.audit_salt)
    drift = DriftMonitor(
        DriftConfig(rules=(MetricRule("accuracy", g.accuracy_drop),), psi_major=g.psi_major),
        classes,
    )
    try:
        drift.set_reference(prepared.train)
    except DataError as exc:
        # Too few local rows for a meaningful reference: metric drift is still watched.
        log.warning("input drift monitoring is off: %s", exc)
    return GovernanceRecorder(
        audit, ModelRegistry(prepared.state_dir / MODELS_DIR), drift=drift, metrics=NodeMetrics()
    )


def metrics_config(prepared: Prepared) -> MetricsConfig:
    """What the daemon serves on its metrics port: metrics, and this node's dashboard."""
    m = prepared.config.metrics
    token = prepared.config.path(m.dashboard_token_file) if m.dashboard_token_file else None
    return MetricsConfig(m.port != 0, m.host, m.port or 9464, token, prepared.state_dir)


class RoundReporter:
    """Owns status, audit, metrics and logs for the running daemon; see the module docs."""

    def __init__(
        self,
        prepared: Prepared,
        status: dict[str, Any],
        recorder: GovernanceRecorder,
        ledger: PrivacyLedger | None,
        layout: ParameterLayout | None = None,
    ) -> None:
        self.status = status
        self.recorder = recorder
        self._prepared = prepared
        self._ledger = ledger
        self.layout = layout
        """The shared parameters' layout, once the model is built (``daemon.serve``)."""
        self._peer: Peer | None = None
        self._transport: Libp2pTransport | None = None
        self._reached: dict[str, str | None] = {}  # member name -> how it was last reached
        self._unreachable_audited: set[str] = set()  # members audited unreachable, not since
        self._links_audited: dict[str, tuple[str, float | None]] = {}  # name -> (via, Mbit/s)
        self._roster_version = prepared.gate.roster.version
        self._names = {m.peer_id: m.name for m in prepared.gate.roster.members}
        self._wait_logged: tuple[tuple[str, ...], float] | None = None  # (what, when)

    def write(self) -> None:
        """Write ``status.json`` now."""
        write_status(self._prepared.state_dir, self.status)

    def roster_changed(self, change: RosterChange) -> None:
        """A newer roster was accepted: audited, and in ``status.json`` at once."""
        self.recorder.roster_changed(
            old_version=change.old.version,
            new_version=change.new.version,
            roster_digest=change.new.digest(),
            added=change.added,
            removed=change.removed,
        )
        self.status["roster_version"] = change.new.version
        self.write()

    def removed(self, peer_id: str, version: int) -> None:
        """This node is not in roster ``version``: its own gate now refuses everyone."""
        log.error(
            "this node (%s) was removed in roster version %d; stopping",
            peer_id,
            version,
            extra={"peer": peer_id},
        )
        self.status |= {"state": "stopped", "stop_reason": f"removed in roster version {version}"}

    def expiry_guard(self) -> Callable[[], None]:
        """The peer's guard: roster expiry into status and metrics, raising once expired."""
        return expiry_guard(self._prepared.gate, self.status, self.recorder.metrics, self.write)

    def refused(self, refusal: SyncRefusal) -> None:
        """Model sync refused a member's model: audited naming the sender by salted hash."""
        self.recorder.refuse_model(refusal.round, refusal.peer, refusal.reason, refusal.detail)
        self._member_error(refusal.peer, f"round {refusal.round}: model refused ({refusal.detail})")

    def waiting(self, wait: Waiting, now: float | None = None) -> None:
        """This member cannot progress: why, since when and for whom, in status and the log.

        ``status.json`` has it at once; the log line is repeated for the same reason and
        members at most every ``WAIT_LOG_INTERVAL_S`` (a member alone retries often).
        """
        now = time.time() if now is None else now
        missing = [self._names.get(m, m) for m in wait.missing]
        since = self.status.get("waiting", {}).get("since", now)
        self.status["waiting"] = {
            "round": wait.round,
            "reason": wait.reason,
            "since": since,
            "missing": missing,
            "retry_in_s": round(wait.retry_in, 1),
        }
        if self._transport is not None:  # who is connected right now, not at the last round
            self.status["connected_peers"] = len(self._transport.connected_peers())
        self._update_members(None)
        self.write()
        # Round numbers move on while the cause stays the same: not a new line each round.
        what = (re.sub(r"\d+", "#", wait.reason), *missing)
        logged = self._wait_logged
        if logged is not None and logged[0] == what and now - logged[1] < WAIT_LOG_INTERVAL_S:
            return
        self._wait_logged = (what, now)
        who = f" for {', '.join(missing)} (not answering)" if missing else ""
        log.warning(
            "round %d: waiting%s: %s; retry in %.0f s",
            wait.round,
            who,
            wait.reason,
            wait.retry_in,
            extra={"round": wait.round, "missing": missing},
        )

    def running(self, peer: Peer, transport: Libp2pTransport, roster_version: int) -> None:
        """A cohort's peer starts its rounds (resumed from the checkpoint's round)."""
        self._peer, self._transport, self._roster_version = peer, transport, roster_version
        metrics = self.recorder.metrics
        if metrics is not None:  # streams refused for their rate, in the exclusions counter
            transport.limiter.on_refuse = lambda _peer, _protocol: metrics.excluded(
                ReasonCode.RATE_LIMITED
            )
        self.status |= {
            "state": "running",
            "listen": list(transport.listen_addrs),
            "completed_round": peer.model_round,  # resumed from the checkpoint
        }
        if self._ledger is not None:
            self.status |= {
                "epsilon": self._ledger.spent_epsilon(),
                "epsilon_budget": self._ledger.budget_epsilon,
                "delta": self._ledger.delta,
                "accountant": self._ledger.accountant_kind,  # the dashboard replays the ledger
                "privacy_ledger": str(self._ledger.path.resolve()),
            }
        versions = self.recorder.registry.versions()
        if versions:  # a restarted node shows the model it holds before its next round
            self.status.setdefault("model_version", versions[-1].version)
        self._update_members(None)
        self.write()

    def _update_members(self, report: RoundReport | None) -> None:
        """Per member: connected now, the last round it was in, its last error (status)."""
        transport = self._transport
        connected = set(transport.connected_peers()) if transport is not None else set()
        own = self._prepared.identity.peer_id
        current = {m.name for m in self._prepared.gate.roster.members if m.peer_id != own}
        rows: dict[str, Any] = {  # members a newer roster removed are no longer shown
            name: row for name, row in self.status.get("members", {}).items() if name in current
        }
        self.status["members"] = rows
        dialback = getattr(transport, "dialback", None)
        if dialback is not None and dialback.own_addrs:  # only a member with roster addresses
            self.status["reachability"] = dialback.reachability.to_status(dialback.name_of)
        for m in self._prepared.gate.roster.members:
            if m.peer_id == own:
                continue
            row = rows.setdefault(m.name, {"last_round": None, "last_error": None})
            row["connected"] = m.peer_id in connected
            row["addresses"] = list(m.addresses)  # how it is dialled (the roster's, for now)
            self._reach(m.name, m.peer_id, row)
            if report is not None and m.peer_id in report.cohort:
                row["last_round"] = report.round
        for e in report.exclusions if report is not None else ():
            self._member_error(e.peer, f"round {e.round}: excluded, {e.reason} ({e.detail})")

    def _reach(self, name: str, peer_id: str, row: dict[str, Any]) -> None:
        """How ``peer_id`` is reached now (direct or relayed, open time, RTT, rate), or why not."""
        links: dict[str, dict[str, Any]] = getattr(self._transport, "links", dict)()
        unreachable = getattr(self._transport, "unreachable", {})
        link = links.get(peer_id)
        row["reached"] = link["via"] if link else None
        row["open_s"] = link["open_s"] if link else None
        row["rtt_s"] = link.get("rtt_s") if link else None
        row["throughput_mbps"] = link.get("throughput_mbps") if link else None
        if link and link.get("hole_punch"):  # relayed, though both ends tried to go direct
            row["hole_punch"] = link["hole_punch"]
        else:
            row.pop("hole_punch", None)
        row["unreachable"] = unreachable.get(peer_id) if link is None else None
        if link is not None:
            self._unreachable_audited.discard(name)
            if self._link_changed(name, link):
                self.recorder.link(peer_id, link["via"], row["rtt_s"], row["throughput_mbps"])
        elif row["unreachable"] and name not in self._unreachable_audited:
            # Once per outage: the reason repeats at every failed dial until it is reached.
            self._unreachable_audited.add(name)
            round_number = self.status.get("round")
            self.recorder.unreachable(
                peer_id, row["unreachable"], round_number if isinstance(round_number, int) else None
            )
        if row["reached"] != self._reached.get(name):
            self._reached[name] = row["reached"]
            if link:
                log.info("member %s is reached %s", name, link["via"], extra={"peer": peer_id})

    def _link_changed(self, name: str, link: dict[str, Any]) -> bool:
        """Whether the audit log last said otherwise: another way, or a rate first or 2× off."""
        via, rate = link["via"], link.get("throughput_mbps")
        last = self._links_audited.get(name)
        changed = (
            last is None
            or last[0] != via
            # Rates wander with load; a new entry only when the figure first or truly moves.
            or (rate is not None and (last[1] is None or not 0.5 < rate / last[1] < 2))
        )
        if changed:
            self._links_audited[name] = (via, rate)
        return changed

    def _member_error(self, peer_id: str, error: str) -> None:
        rows: dict[str, Any] = self.status.setdefault("members", {})
        for m in self._prepared.gate.roster.members:
            if m.peer_id == peer_id:
                rows.setdefault(m.name, {"last_round": None, "connected": False})
                rows[m.name]["last_error"] = error

    def on_report(self, report: RoundReport) -> None:
        """One round ended: audit, registry, drift, metrics, ``status.json`` and a log line."""
        peer, transport = self._peer, self._transport
        assert peer is not None and transport is not None, "running() names the peer first"
        self.recorder.begin_round(
            report.round,
            roster_version=self._roster_version,
            mode=self._prepared.config.rounds.mode,
            cohort=report.cohort,
        )
        for e in report.exclusions:
            self.recorder.exclude(report.round, e.peer, e.reason, e.detail, e.count)
        if report.committed:
            self._committed(report, peer)
            self.status.pop("waiting", None)  # progressing again
            self._wait_logged = None
        else:
            self.recorder.fail_round(
                report.round,
                duration_s=report.duration_s,
                reason=report.reason,
                stages_s=report.stages_s,
            )
        if self.recorder.metrics is not None:
            self.recorder.metrics.set_peers(len(transport.connected_peers()))
        self.status.update(
            round=report.round,
            completed_round=peer.model_round,
            last={
                k: v
                for k, v in asdict(report).items()
                if k not in ("exclusions", "cohort", "certificate")
            },
            certified=report.certificate is not None,
            exclusions=[f"{e.peer}:{e.reason}" for e in report.exclusions],
            epsilon=report.epsilon,
            bytes_sent=peer.bytes_sent,
            connected_peers=len(transport.connected_peers()),
            refused_streams=transport.limiter.refused_total,
            model_digest=report.model_digest,
            test_accuracy=report.test_accuracy,
        )
        self._update_members(report)
        self.write()
        log.info(
            "round %d %s: accuracy %.3f, eps %s, %d contributors",
            report.round,
            "committed" if report.committed else f"missed ({report.reason})",
            report.test_accuracy,
            "off" if report.epsilon is None else f"{report.epsilon:.3f}",
            report.contributors,
            extra={"round": report.round},
        )

    def _committed(self, report: RoundReport, peer: Peer) -> None:
        """Store and audit the round's model with its DP record; drift alerts into status."""
        layout = self.layout
        assert layout is not None, "a round committed before the model was built"
        record = self.recorder.finish_round(
            report.round,
            tensors_from_flat(layout.names, layout.shapes, peer.weights),
            dp=self._dp_record(report),
            metrics={
                "accuracy": report.test_accuracy,
                "loss": report.test_loss,
                "bytes_sent": float(report.bytes_sent),
            },
            duration_s=report.duration_s,
            bytes_sent=report.bytes_sent,
            certificate=report.certificate,
            stages_s=report.stages_s,
        )
        self.status["model_version"] = record.manifest.version
        self.status["drift_alerts"] = [a.to_dict() for a in record.alerts]

    def _dp_record(self, report: RoundReport) -> DPRecord:
        """The round's DP mechanism and ε so far; ``off`` with no ledger."""
        p, ledger = self._prepared.config.privacy, self._ledger
        return DPRecord(
            noise_multiplier=self._prepared.sigma if ledger else 0.0,
            clip_norm=p.clip_norm,
            sample_rate=report.sample_rate,
            delta=p.delta,
            epsilon=report.epsilon or 0.0,
            accountant=self._prepared.config.accountant if ledger else "off",
            steps=report.steps,
            epsilon_budget=p.epsilon_budget if ledger else None,
            ledger_head=ledger.head().to_dict() if ledger else None,
        )

    def budget_exhausted(self, exc: BudgetExceededError) -> None:
        """The rounds stopped because the privacy budget would be exceeded."""
        self.status |= {"state": "budget-exhausted", "error": str(exc)}
        self.status["stop_reason"] = "budget exhausted"
        log.error("%s", exc)

    def roster_expired(self, exc: RosterError) -> bool:
        """Record an expired roster as the end of the run; False for other roster problems."""
        return roster_expired(self.status, exc)

    def finished(self) -> None:
        """Every configured round ran."""
        self.status |= {"state": "finished", "stop_reason": "finished"}

    def certified_late(self, certificate: CommitCertificate) -> None:
        """The model held got its certificate after its round (late votes, or a member's).

        ``Peer`` calls this only for the model it holds, so its weights are the certified ones.
        """
        peer, layout = self._peer, self.layout
        if peer is not None and layout is not None:
            tensors = tensors_from_flat(layout.names, layout.shapes, peer.weights)
            self.recorder.certified_late(certificate.round, tensors, certificate)
        self.status["certified"] = True
        self.write()

    def rounds_over(self, peer: Peer) -> None:
        """Where the rounds left the node: its last round, ε, model digest and certificate."""
        self.status |= {
            "certified": peer.certificate is not None,  # of the model held, not the last round
            "completed_round": peer.model_round,
            "epsilon": peer.epsilon,
            "model_digest": weights_digest(peer.weights).hex(),
        }
