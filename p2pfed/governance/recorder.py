"""One object the daemon calls at each step of a round, feeding every governance part.

Theory of operation: the daemon should not have to remember that a finished round means
an audit ``model_version`` and ``dp`` entry, a registry version, a drift check whose alerts
go to the audit log, the metrics and the log, in that order. ``GovernanceRecorder``
composes an ``AuditLog``, a ``ModelRegistry``, and optionally a ``DriftMonitor`` and
``NodeMetrics``, and turns the daemon's few calls (``start``, ``begin_round``, ``exclude``,
``finish_round``, ``fail_round``, ``certified_late``, ``stop``) into all of that. It owns
no I/O beyond what its parts do and holds no protocol state: the parent hash is the
previous round's model hash.

Ordering: the model and DP entries are written only after the aggregate has been applied
and the ledger has recorded the spend, so a crash between the two leaves a round with a
``round_start`` and no ``round_end``, which is visible in the log rather than hidden.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from numpy.typing import NDArray

from p2pfed.errors import ReasonCode
from p2pfed.governance.audit import AuditLog
from p2pfed.governance.drift import DriftAlert, DriftMonitor, Samples, describe
from p2pfed.governance.metrics import NodeMetrics
from p2pfed.governance.models import ModelManifest, ModelRegistry, model_hash

log = logging.getLogger("p2pfed.governance")
PEER_ID = re.compile(r"\b(?:12D3KooW|Qm)[1-9A-HJ-NP-Za-km-z]{40,}\b")
"""A libp2p peer ID as text (Ed25519 identity keys, or SHA-256 multihashes)."""


class Certificate(Protocol):
    """A round's commit certificate (``p2pfed.node.certificates.CommitCertificate`` is one)."""

    def to_dict(self) -> dict[str, Any]:
        """Its full JSON form, stored beside the model."""

    def summary(self) -> dict[str, Any]:
        """What the audit log records of it (no peer IDs)."""


@dataclass(frozen=True, slots=True)
class DPRecord:
    """The round's DP mechanism and the ε spent so far, as the privacy ledger reports them."""

    noise_multiplier: float
    clip_norm: float
    sample_rate: float
    delta: float
    epsilon: float
    accountant: str
    steps: int = 1
    epsilon_budget: float | None = None
    ledger_head: dict[str, Any] | None = None
    """The privacy ledger's head after the round (``LedgerHead.to_dict``), anchoring it."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the model manifest."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "accountant": self.accountant,
        }


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """What ``finish_round`` stored: the model version and any drift alerts."""

    round: int
    manifest: ModelManifest
    alerts: tuple[DriftAlert, ...]


class GovernanceRecorder:
    """Feeds the audit log, model registry, drift monitor and metrics from round events."""

    def __init__(
        self,
        audit: AuditLog,
        registry: ModelRegistry,
        *,
        drift: DriftMonitor | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.audit = audit
        self.registry = registry
        self.drift = drift
        self.metrics = metrics
        versions = registry.versions()
        self._parent: str | None = versions[-1].model_hash if versions else None
        self._cohort: tuple[str, ...] = ()

    @property
    def latest_model_hash(self) -> str | None:
        """The newest stored model's hash (the next version's parent)."""
        return self._parent

    def start(
        self,
        *,
        software_version: str,
        consortium: str,
        roster_version: int,
        roster_digest: str,
    ) -> None:
        """The daemon started under roster ``roster_version``."""
        self.audit.daemon_start(
            software_version=software_version,
            consortium=consortium,
            roster_version=roster_version,
        )
        self.audit.roster_version(roster_version, roster_digest=roster_digest)
        log.info("daemon started", extra={"roster_version": roster_version})

    def roster_changed(
        self,
        *,
        old_version: int,
        new_version: int,
        roster_digest: str,
        added: Sequence[str] = (),
        removed: Sequence[str] = (),
    ) -> None:
        """A newer roster was accepted."""
        self.audit.roster_change(
            old_version=old_version, new_version=new_version, added=added, removed=removed
        )
        self.audit.roster_version(new_version, roster_digest=roster_digest)
        log.info(
            "roster changed",
            extra={"roster_version": new_version, "added": len(added), "removed": len(removed)},
        )

    def begin_round(
        self, round_number: int, *, roster_version: int, mode: str, cohort: Iterable[str]
    ) -> None:
        """A round starts with ``cohort`` (raw peer IDs; only salted hashes are stored)."""
        self._cohort = tuple(sorted(set(cohort)))
        self.audit.round_start(round_number, roster_version=roster_version, mode=mode)
        self.audit.cohort(round_number, self._cohort)
        if self.metrics is not None:
            # peers_connected is the transport's to set: the cohort is who answered, not
            # who is connected.
            self.metrics.round_started(round_number)
        log.info("round started", extra={"round": round_number, "cohort": len(self._cohort)})

    def exclude(
        self,
        round_number: int,
        peer_id: str,
        reason: ReasonCode,
        detail: str = "",
        count: int = 1,
    ) -> None:
        """A peer was excluded from the round (recorded, never silent).

        ``count`` messages refused for one reason make one audit entry and one log line;
        the metric counts every message.
        """
        self.audit.exclusion(round_number, peer_id, reason, detail, count)
        if self.metrics is not None:
            self.metrics.excluded(reason, count)
        log.warning(
            "peer excluded",
            extra={
                "round": round_number,
                "peer": peer_id,
                "reason": ReasonCode(reason).value,
                "count": count,
            },
        )

    def unreachable(self, peer_id: str, reason: str, round_number: int | None = None) -> None:
        """This node reaches ``peer_id`` neither directly nor by relay: audited with the reason.

        Every peer ID in ``reason`` (the peer's, a relay's) is replaced by its salted hash,
        as everywhere in the audit log.
        """
        hashed = PEER_ID.sub(lambda m: self.audit.hash_peer(m.group(0)), reason)
        self.audit.unreachable(peer_id, hashed, round_number)
        log.warning("member unreachable", extra={"peer": peer_id, "reason": reason})

    def link(
        self, peer_id: str, via: str, rtt_s: float | None, throughput_mbps: float | None
    ) -> None:
        """How this node reaches ``peer_id`` now, as measured: audited (peer by salted hash)."""
        self.audit.link(peer_id, via, rtt_s, throughput_mbps)

    def refuse_model(
        self, claimed_round: int, peer_id: str, reason: ReasonCode, detail: str = ""
    ) -> None:
        """Model sync refused ``peer_id``'s model (no or a bad certificate): name the sender.

        The raw peer ID is replaced in ``detail``: the audit log names peers by salted hash.
        """
        self.exclude(
            claimed_round,
            peer_id,
            reason,
            "model sync refused its model: " + detail.replace(peer_id, "the sender"),
        )

    def finish_round(
        self,
        round_number: int,
        tensors: Sequence[tuple[str, NDArray[Any]]],
        *,
        dp: DPRecord,
        metrics: Mapping[str, float],
        duration_s: float,
        participants: Iterable[str] | None = None,
        data: Samples | None = None,
        bytes_sent: int = 0,
        bytes_received: int = 0,
        certificate: Certificate | None = None,
        stages_s: Iterable[tuple[str, float]] = (),
    ) -> RoundRecord:
        """The round's aggregate was applied: store it, audit it, check drift, count it.

        ``tensors`` are the shared parameters (``models.tensors_from_flat``);
        ``participants`` default to the cohort given to ``begin_round``; ``metrics`` are the
        local validation metrics of the new model; ``data`` is the node's current data when
        it was re-read (for input drift).
        """
        people = tuple(sorted(set(participants))) if participants is not None else self._cohort
        manifest = self.registry.add(
            round_number,
            tensors,
            parent_hash=self._parent,
            participants=[self.audit.hash_peer(p) for p in people],
            dp=dp.to_dict(),
            metrics=metrics,
            certificate=None if certificate is None else certificate.to_dict(),
        )
        self.audit.model_version(
            round_number,
            model_hash=manifest.model_hash,
            parent_hash=manifest.parent_hash,
            certificate=None if certificate is None else certificate.summary(),
        )
        self.audit.dp(
            round_number,
            noise_multiplier=dp.noise_multiplier,
            clip_norm=dp.clip_norm,
            sample_rate=dp.sample_rate,
            delta=dp.delta,
            epsilon=dp.epsilon,
            accountant=dp.accountant,
            steps=dp.steps,
            ledger_head=dp.ledger_head,
        )
        self._parent = manifest.model_hash
        alerts: list[DriftAlert] = []
        if self.drift is not None:
            alerts = self.drift.observe(
                round_number, metrics, data if self.drift.has_reference else None
            )
            for alert in alerts:
                self.audit.drift_alert(round_number, alert.to_dict())
                if self.metrics is not None:
                    self.metrics.drift_alert(alert.kind.value)
            for line in describe(alerts):
                log.warning(line, extra={"round": round_number})
        self.audit.round_end(
            round_number,
            outcome="completed",
            duration_s=duration_s,
            participants=len(people),
            stages_s=stages_s,
        )
        if self.metrics is not None:
            self.metrics.round_finished(duration_s, "completed")
            self.metrics.set_epsilon(dp.epsilon, dp.epsilon_budget)
            self.metrics.add_traffic(bytes_sent, bytes_received)
        log.info(
            "round completed",
            extra={
                "round": round_number,
                "model": manifest.version,
                "epsilon": dp.epsilon,
                "duration_s": round(duration_s, 3),
            },
        )
        return RoundRecord(round_number, manifest, tuple(alerts))

    def certified_late(
        self,
        round_number: int,
        tensors: Sequence[tuple[str, NDArray[Any]]],
        certificate: Certificate,
    ) -> ModelManifest | None:
        """The model held (``tensors``, from ``round_number``) was certified after its round.

        Its certificate goes beside it in the registry (when stored here: a model caught up
        by model sync may not be) and its summary into the audit log, so ``audit`` and
        ``model check`` see every certified model, not only those certified in time.
        """
        digest = model_hash(tensors)
        manifest = self.registry.attach_certificate(round_number, digest, certificate.to_dict())
        self.audit.model_certified(
            round_number,
            model_hash=digest,
            stored=manifest is not None,
            certificate=certificate.summary(),
        )
        log.info("model certified after its round", extra={"round": round_number})
        return manifest

    def fail_round(
        self,
        round_number: int,
        *,
        duration_s: float,
        reason: str,
        outcome: str = "failed",
        stages_s: Iterable[tuple[str, float]] = (),
    ) -> None:
        """The round ended without a new model (``outcome``: failed or aborted)."""
        self.audit.round_end(
            round_number,
            outcome=outcome,
            duration_s=duration_s,
            participants=len(self._cohort),
            reason=reason,
            stages_s=stages_s,
        )
        if self.metrics is not None:
            self.metrics.round_finished(duration_s, outcome)
        log.warning("round %s", outcome, extra={"round": round_number, "reason": reason})

    def stop(self, reason: str = "shutdown") -> None:
        """The daemon is stopping; the audit log is closed."""
        self.audit.daemon_stop(reason=reason)
        self.audit.close()
        log.info("daemon stopped", extra={"reason": reason})
