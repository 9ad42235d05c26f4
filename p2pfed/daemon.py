"""The peer daemon: builds a ``Peer`` from a config file and runs it until done or signalled.

Theory of operation: ``prepare`` does every check that can fail on bad input *before* the
node touches the network — config, identity key (permissions), roster (signatures, expiry,
rollback), data (loading, schema and validation report), privacy ledger (integrity, budget)
— so a bad installation stops with one clear sentence. ``serve`` then opens the libp2p host,
composes the aggregator and the peer, and runs rounds; after each it writes ``status.json``
(what ``p2pfed status`` shows). While it runs, the roster file is watched and members push
newer rosters to each other (``p2pfed.node.roster_sync``); on an accepted change the round in
progress is abandoned and the cohort rebuilt over the new membership on the same transport.
SIGINT/SIGTERM cancel the run: the current stage is
abandoned at its next await (trio delivers the cancel inside an exception group, which
``ended`` unwraps), the transport, ledger and files are closed on the way out, the last
completed round stays checkpointed, ``status.json`` says ``stopped`` with that round, and
the audit log's ``daemon_stop`` says why (the signal, finished, budget exhausted, error).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trio

from p2pfed import __version__
from p2pfed.config import Config
from p2pfed.durable import atomic_write
from p2pfed.errors import BudgetExceededError, ConfigError, DataError, IntegrityError
from p2pfed.governance.audit import AuditLog, ProblemKind, verify_log
from p2pfed.governance.drift import DriftConfig, DriftMonitor, MetricRule
from p2pfed.governance.metrics import MetricsConfig, NodeMetrics, serve_if_enabled
from p2pfed.governance.models import ModelRegistry, tensors_from_flat
from p2pfed.governance.recorder import DPRecord, GovernanceRecorder
from p2pfed.identity import Identity, Role, RosterError, RosterGate
from p2pfed.lifecycle import ended, expiry_guard, load_audit_salt, roster_expired, stop_reason
from p2pfed.node.peer import CHECKPOINT
from p2pfed.node.roster_sync import (
    LiveRoster,
    RosterAnnouncer,
    RosterChange,
    enforce,
    run_unless,
    session_id,
)
from p2pfed.privacy import NoiseMode, PrivacyLedger
from p2pfed.privacy import anchors as ledger_anchors
from p2pfed.privacy.ledger_format import Anchor
from p2pfed.privacy.release import PrivateReleaser
from p2pfed.secagg.params import CohortPlan, SecAggConfig, plan_cohort
from p2pfed.training.data import Dataset, load_builtin, load_table, train_test_split
from p2pfed.training.models import build_model
from p2pfed.training.trainer import DPSGD, LocalTrainer
from p2pfed.training.validation import Schema, Thresholds, ValidationReport, validate

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
VALIDATION_FILE = "validation.json"


@dataclass
class Prepared:
    """Everything checked and loaded before the node goes on the network."""

    config: Config
    identity: Identity
    gate: RosterGate
    train: Dataset
    test: Dataset
    report: ValidationReport
    state_dir: Path
    ledger_anchors: tuple[Anchor, ...] = ()
    audit_salt: bytes = b""
    sigma: float = 0.0
    """The noise multiplier the node will use (planned once: the search can take seconds)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``/ip4/HOST/tcp/PORT`` → (HOST, PORT); ``ConfigError`` naming the key otherwise."""
    parts = listen.strip("/").split("/")
    if len(parts) != 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp":
        raise ConfigError(f"[network] listen {listen!r} must look like /ip4/0.0.0.0/tcp/4001")
    try:
        port = int(parts[3])
    except ValueError:
        raise ConfigError(f"[network] listen port {parts[3]!r} is not a number") from None
    return parts[1], port


def check_port_free(host: str, port: int) -> None:
    """Bind and release ``host:port`` as the transport will; ``ConfigError`` if it cannot.

    Run in ``prepare``, so a port in use stops the node with one sentence before the audit
    log records a start (the transport's own failure arrives inside an exception group).
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As trio's listeners do, so a port left in TIME_WAIT by our own last run is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"[network] listen: cannot listen on {host} port {port} ({exc.strerror}); "
                "another process holds it (a second daemon?) or the address is not this machine's"
            ) from None


def load_data(config: Config) -> Dataset:
    """The node's local data set, from a CSV or Parquet file or a built-in set."""
    d = config.data
    if d.builtin:
        return load_builtin(d.builtin)
    return load_table(config.path(d.path), d.label_column, list(d.feature_columns) or None)


def standardise(
    train: Dataset, test: Dataset, center: tuple[float, ...] = (), scale: tuple[float, ...] = ()
) -> tuple[Dataset, Dataset]:
    """Z-score both parts with the schema's agreed centre and scale, else local statistics.

    Agreed constants give every member the same input space; local statistics (no data
    leaves the node either way) differ between sites when their populations differ.
    """
    if center:
        if len(center) != train.n_features:
            raise ConfigError(
                f"[schema] center has {len(center)} entries for {train.n_features} features"
            )
        mean, std = np.array(center, dtype=np.float32), np.array(scale, dtype=np.float32)
    else:
        mean = np.nanmean(train.x, axis=0)
        std = np.nanstd(train.x, axis=0)
        std[~(std > 1e-8)] = 1.0

    def rescale(d: Dataset) -> Dataset:
        return Dataset(((d.x - mean) / std).astype(np.float32), d.y, d.feature_names, d.name)

    return rescale(train), rescale(test)


def secagg_plan(config: Config, members: Sequence[str]) -> CohortPlan:
    """The secure-aggregation plan ``[secagg]`` gives these members; one sentence if unsafe."""
    s = config.secagg
    try:
        return plan_cohort(
            SecAggConfig(
                "plan-check",  # the floors do not depend on the consortium or round
                0,
                1,
                s.bits,
                threshold=s.threshold or None,
                collusion=s.collusion,
                min_contributors=s.min_contributors or None,
            ),
            frozenset(members),
        )
    except ConfigError as exc:
        raise ConfigError(f"[secagg] with {len(members)} members: {exc}") from None


def prepare(config: Config, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Prepared:
    """Check key, roster, listen address, membership, ledger and data, before any network use."""
    state_dir = config.path(config.node.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    identity = Identity.load(config.path(config.node.identity))
    gate = RosterGate.open(
        config.path(config.network.roster), state=state_dir / "roster-state.json", clock=now
    )
    if not gate(identity.peer_id):
        raise ConfigError(
            f"this node ({identity.peer_id}) is not a member of roster version "
            f"{gate.roster.version}; ask the consortium admins to add it"
        )
    check_port_free(*parse_listen(config.network.listen))
    members = [m for m in gate.roster.members if m.role is Role.MEMBER]
    if config.secagg.enabled and len(members) < 3:
        raise ConfigError(
            f"[secagg] enabled needs at least 3 members (the roster has {len(members)}): a sum "
            "of two would reveal the other's update"
        )
    if config.secagg.enabled:
        plan = secagg_plan(config, [m.peer_id for m in members])
        if config.rounds.mode == "gossip":
            import topologies
            from p2pfed.collectives.secure_gossip import check_groups

            check_groups(
                topologies.build(config.rounds.topology, len(members)), plan.min_contributors
            )
    if config.rounds.min_peers > len(members):
        raise ConfigError(
            f"[rounds] min_peers = {config.rounds.min_peers} exceeds the roster's "
            f"{len(members)} members"
        )
    p = config.privacy
    anchors: tuple[Anchor, ...] = ()
    sigma: float | None = None
    if p.mode != "off":
        # Integrity, anchoring and budget now, before the network: a corrupted, cut or
        # rolled-back ledger stops the node.
        found = ledger_anchors.collect(state_dir / CHECKPOINT, state_dir / AUDIT_FILE)
        anchors = found.heads
        if not config.path(p.ledger).exists():
            found.refuse_missing(config.path(p.ledger))
    if p.mode != "off" and config.path(p.ledger).exists():
        with PrivacyLedger(
            config.path(p.ledger),
            p.epsilon_budget,
            p.delta,
            config.accountant,
            read_only=True,
            anchors=anchors,
        ) as ledger:
            if ledger.remaining_epsilon() <= 0:
                raise BudgetExceededError(
                    f"the privacy budget ε = {p.epsilon_budget:g} is spent "
                    f"({ledger.spent_epsilon():.4g} recorded in {ledger.path}); nothing more "
                    "may be released"
                )
            sigma = noise_multiplier(config)
            check_rounds_fit(config, ledger, completed_round(state_dir), sigma)
    data = load_data(config)
    schema = Schema(
        features=config.schema.features or data.feature_names,
        labels=config.schema.labels,
        types=config.schema.types,
        label_distribution=config.schema.label_distribution,
    )
    v = config.validation
    report = validate(
        data,
        schema,
        Thresholds(v.min_samples, v.max_missing_fraction, v.max_label_skew, v.min_classes),
    )
    report.save(state_dir / VALIDATION_FILE)
    if not report.passed:
        raise DataError(report.summary() + "; this node will not join")
    train, test = train_test_split(
        data, config.data.test_fraction, np.random.default_rng(config.model.seed)
    )
    train, test = standardise(train, test, config.schema.center, config.schema.scale)
    salt = load_audit_salt(config, state_dir / AUDIT_FILE)
    if sigma is None:
        sigma = noise_multiplier(config)
    return Prepared(config, identity, gate, train, test, report, state_dir, anchors, salt, sigma)


AUDIT_FILE = "audit.jsonl"
MODELS_DIR = "models"


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


def peer_addresses(config: Config, members: dict[str, Any], me: str) -> dict[str, list[str]]:
    """Where to dial each other member: its roster addresses, then ``[network] bootstrap``.

    A bootstrap entry is a multiaddr ending in ``/p2p/<peer ID>`` of a roster member (for
    example an address behind your own NAT or VPN that the roster does not list).
    """
    addrs = {pid: list(m.addresses) for pid, m in members.items() if pid != me}
    for entry in config.network.bootstrap:
        base, sep, peer = entry.rpartition("/p2p/")
        if not sep or not base.startswith("/"):
            raise ConfigError(f"[network] bootstrap entry {entry!r} must end in /p2p/<peer ID>")
        if peer not in members:
            raise ConfigError(f"[network] bootstrap entry {entry!r} names a peer not in the roster")
        if peer != me and base not in addrs[peer]:
            addrs[peer].append(base)
    return addrs


def completed_round(state_dir: Path) -> int:
    """The last round this node's checkpoint holds (−1 before the first)."""
    state = ledger_anchors.checkpoint_state(state_dir / CHECKPOINT)
    return -1 if state is None else int(state["round"])


def release_shape(config: Config) -> tuple[int, float]:
    """(accountant steps, Poisson rate) one round's release composes under ``[privacy]``."""
    p = config.privacy
    if p.mode == "dp-sgd":
        t = config.training
        return t.local_steps or t.local_epochs * math.ceil(1.0 / p.sample_rate), p.sample_rate
    return 1, 1.0


def check_rounds_fit(config: Config, ledger: PrivacyLedger, completed: int, sigma: float) -> None:
    """Refuse to start when the rounds still to run cannot fit what is left of the budget.

    Checked for local and DP-SGD noise, whose releases the ledger charges exactly as planned
    here; distributed releases are charged against colluders by their own plan.
    """
    p = config.privacy
    to_go = config.rounds.rounds - (completed + 1)
    if p.mode not in ("local", "dp-sgd") or to_go <= 0:
        return
    steps, q = release_shape(config)
    fits = ledger.rounds_left(sigma, q, steps)
    if fits < to_go:
        raise BudgetExceededError(
            f"the {to_go} rounds still to run at σ = {sigma:.3g} need more than the ε "
            f"{ledger.remaining_epsilon():.3g} left of the budget {p.epsilon_budget:g} (only "
            f"{fits} fit): lower [rounds] rounds to {completed + 1 + fits}, or raise σ (set "
            "[privacy] target_epsilon, or see `p2pfed privacy plan`)"
        )


def noise_multiplier(config: Config) -> float:
    """σ from the config, or, with ``target_epsilon``, the smallest σ that meets it.

    The plan covers every configured round: one release per round (q = 1) for update-level
    DP, or the local DP-SGD steps of each round (Poisson rate ``sample_rate``).
    """
    p = config.privacy
    if p.target_epsilon <= 0:
        return p.noise_multiplier
    from p2pfed.privacy import noise_multiplier_for

    per_round, q = release_shape(config)
    sigma = noise_multiplier_for(
        p.target_epsilon, p.delta, q, config.rounds.rounds * per_round, config.accountant
    )
    log.info(
        "noise multiplier %.4f meets ε = %g over %d rounds (%d steps each, q = %g)",
        sigma,
        p.target_epsilon,
        config.rounds.rounds,
        per_round,
        q,
    )
    return sigma


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Atomically replace ``status.json`` (read by ``p2pfed status`` and the demo)."""
    status = {**status, "updated": time.time(), "pid": os.getpid()}
    atomic_write(state_dir / STATUS_FILE, json.dumps(status, sort_keys=True).encode(), 0o644)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status a daemon wrote, or None."""
    try:
        loaded: dict[str, Any] = json.loads((state_dir / STATUS_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{state_dir / STATUS_FILE} is unreadable ({exc})") from None
    return loaded


async def serve(prepared: Prepared, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the node until its rounds are done, the budget is spent, or it is cancelled.

    ``status`` (filled in, and also returned) survives a cancellation, so the caller still
    learns the last completed round and why the run ended.
    """
    config, identity = prepared.config, prepared.identity
    roster = prepared.gate.roster
    consortium = roster.consortium_id
    torch.set_num_threads(1)  # peers share the machine's cores with their neighbours
    classes = max(len(config.schema.labels), int(prepared.train.y.max()) + 1)
    model = build_model(
        config.model.kind,
        prepared.train.n_features,
        classes,
        config.model.hidden,
        config.model.seed,
    )
    sigma = prepared.sigma
    trainer = LocalTrainer(
        model,
        config.training,
        torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little")),
        dp_sgd=(
            DPSGD(config.privacy.sample_rate, config.privacy.clip_norm, sigma)
            if config.privacy.mode == "dp-sgd"
            else None
        ),
    )
    p = config.privacy
    status = {} if status is None else status
    status |= {
        "name": config.node.name,
        "peer_id": identity.peer_id,
        "consortium": consortium,
        "roster_version": roster.version,
        "rounds": config.rounds.rounds,
        "state": "starting",
    }
    # Everything opened here is closed (in reverse order) however start-up or the run ends.
    cleanup = contextlib.ExitStack()
    with cleanup:
        recorder = open_governance(prepared, consortium, classes)
        cleanup.callback(lambda: recorder.stop(reason=stop_reason(status)))
        recorder.start(
            software_version=__version__,
            consortium=consortium,
            roster_version=roster.version,
            roster_digest=roster.digest(),
        )
        assert recorder.metrics is not None  # open_governance always attaches metrics
        metrics_server = serve_if_enabled(
            recorder.metrics,
            MetricsConfig(
                config.metrics.port != 0, config.metrics.host, config.metrics.port or 9464
            ),
        )
        if metrics_server is not None:
            cleanup.callback(metrics_server.close)
        ledger = None
        if p.mode != "off":
            ledger = PrivacyLedger(
                config.path(p.ledger),
                p.epsilon_budget,
                p.delta,
                config.accountant,
                anchors=prepared.ledger_anchors,
            )
            cleanup.callback(ledger.close)
        cleanup.callback(lambda: write_status(prepared.state_dir, status))
        write_status(prepared.state_dir, status)
        await _run_peer(prepared, status, recorder, ledger, trainer, sigma)
    return status


async def _run_peer(
    prepared: Prepared,
    status: dict[str, Any],
    recorder: GovernanceRecorder,
    ledger: PrivacyLedger | None,
    trainer: LocalTrainer,
    sigma: float,
) -> None:
    """Open the transport, compose aggregator and peer, and run the rounds."""
    import topologies
    from p2pfed.collectives.gossip_driver import GossipConfig, GossipService
    from p2pfed.collectives.round import RingRound
    from p2pfed.collectives.secure import SecureRingRound
    from p2pfed.collectives.secure_gossip import SecureGossipService
    from p2pfed.collectives.signing import Ed25519CohortSigner
    from p2pfed.node import (
        GossipAggregator,
        Peer,
        RingAggregator,
        RoundReport,
        SecureRingAggregator,
    )
    from p2pfed.node.aggregators import Aggregator
    from p2pfed.node.sync import weights_digest
    from p2pfed.privacy.ddg import DDGPlan, secure_ring_encoder
    from p2pfed.secagg.fixedpoint import FixedPoint
    from p2pfed.transport.libp2p import Libp2pTransport

    config, identity = prepared.config, prepared.identity
    roster = prepared.gate.roster
    members = {m.peer_id: m for m in roster.members if m.role is Role.MEMBER}
    host, port = parse_listen(config.network.listen)
    consortium = roster.consortium_id
    p = config.privacy
    try:
        async with Libp2pTransport(
            identity.seed,
            prepared.gate,
            host=host,
            port=port,
            peer_addrs=peer_addresses(config, members, identity.peer_id),
        ) as transport:
            live = LiveRoster(prepared.gate, config.path(config.network.roster))
            changed = [trio.Event()]

            async def on_change(change: RosterChange) -> None:
                # Within one round: removed members are cut off now (the gate already
                # refuses them), and the rounds restart over the new membership.
                recorder.roster_changed(
                    old_version=change.old.version,
                    new_version=change.new.version,
                    roster_digest=change.new.digest(),
                    added=change.added,
                    removed=change.removed,
                )
                status["roster_version"] = change.new.version
                write_status(prepared.state_dir, status)
                changed[0].set()  # first: the new cohort's services are up within moments
                await enforce(change, transport)

            async with trio.open_nursery() as background:
                announcer = RosterAnnouncer(transport, live, on_change)
                background.start_soon(announcer.run)

                async def one_membership(wake: trio.Event, rebuilt: bool) -> bool:
                    """Build the cohort of the roster in force and run; True when done."""
                    nonlocal status
                    roster = prepared.gate.roster
                    members = {m.peer_id: m for m in roster.members if m.role is Role.MEMBER}
                    keys = {pid: m.public_key for pid, m in members.items()}
                    if identity.peer_id not in members:
                        # Its own gate now refuses everyone: nothing more to do but stop.
                        log.error(
                            "this node (%s) was removed in roster version %d; stopping",
                            identity.peer_id,
                            roster.version,
                        )
                        status |= {
                            "state": "stopped",
                            "stop_reason": f"removed in roster version {roster.version}",
                        }
                        return True
                    signer = Ed25519CohortSigner(identity.seed, keys)
                    # Aggregation messages of another roster version's cohort are refused.
                    session = session_id(consortium, roster.version)
                    n = len(members)
                    peers = sorted(members)
                    # A secure sum completes only with the consistency quorum (more than
                    # (n + collusion)/2 members, at least min_contributors and min_peers) in it:
                    # distributed DP noise is split over that many shares.
                    min_survivors, min_contributors = config.rounds.min_peers, 3
                    if config.secagg.enabled:
                        plan = secagg_plan(config, peers)
                        min_survivors = max(min_survivors, plan.min_survivors)
                        min_contributors = plan.min_contributors
                    stage_timeout = min(10.0, config.rounds.round_timeout_s / 4)
                    fixed_point = FixedPoint(
                        clip=config.secagg.clip_range, ring_bits=config.secagg.bits
                    )
                    aggregator: Aggregator
                    discrete: DDGPlan | None = None
                    if config.rounds.mode == "gossip":
                        topology = topologies.build(config.rounds.topology, n)
                        service: Any
                        if config.secagg.enabled:
                            service = SecureGossipService(
                                transport,
                                session,
                                peers,
                                topology,
                                keys,
                                identity,
                                fixed_point=fixed_point,
                                stage_timeout=stage_timeout,
                                rng=np.random.default_rng(),
                                min_contributors=min_contributors,
                                collusion=config.secagg.collusion,
                            )
                        else:
                            service = GossipService(
                                transport,
                                session,
                                peers,
                                topology,
                                config=GossipConfig(deadline=stage_timeout, timeout=stage_timeout),
                            )
                        aggregator = GossipAggregator(service, config.secagg.enabled)
                    elif config.secagg.enabled:
                        secure = SecureRingRound(
                            transport,
                            session,
                            roster.version,
                            keys,
                            identity,
                            signer,
                            stage_timeout=stage_timeout,
                            threshold=config.secagg.threshold or None,
                            collusion=config.secagg.collusion,
                            min_contributors=config.secagg.min_contributors or None,
                        )
                        encoder, discrete = secure_ring_encoder(
                            fixed_point,
                            distributed=p.mode == "distributed",
                            collusion=config.secagg.collusion,
                            threshold=plan.threshold,
                            n_peers=n,
                            min_contributors=min_survivors,
                            dimension=trainer.layout.size,
                            clip_norm=p.clip_norm,
                            noise_multiplier=sigma,
                        )
                        aggregator = SecureRingAggregator(
                            secure, encoder, n, min_survivors, np.random.default_rng()
                        )
                    else:
                        aggregator = RingAggregator(
                            RingRound(transport, session, roster.version, peers, signer)
                        )
                    releaser = None
                    if ledger is not None:
                        releaser = PrivateReleaser(
                            ledger,
                            clip_norm=p.clip_norm,
                            noise_multiplier=sigma,
                            mode=NoiseMode(p.mode),
                            n_peers=n,
                            min_peers=aggregator.guaranteed_contributors,
                            discrete=discrete,
                        )
                    peer = Peer(
                        transport=transport,
                        consortium=consortium,
                        members=sorted(members),
                        trainer=trainer,
                        train=prepared.train,
                        test=prepared.test,
                        aggregator=aggregator,
                        releaser=releaser,
                        state_dir=prepared.state_dir,
                        signer=signer,
                        roster_version=roster.version,
                        certificate_floor=max(2, config.rounds.min_peers),
                        on_refusal=lambda r: recorder.refuse_model(
                            r.round, r.peer, r.reason, r.detail
                        ),
                        guard=expiry_guard(
                            prepared.gate,
                            status,
                            recorder.metrics,
                            lambda: write_status(prepared.state_dir, status),
                        ),
                    )
                    assert peer.guard is not None
                    peer.guard()  # an expiring roster is in status and warned about from the start
                    if rebuilt:
                        peer.renumber()
                    status |= {
                        "state": "running",
                        "listen": list(transport.listen_addrs),
                        "completed_round": peer.model_round,  # resumed from the checkpoint
                    }
                    write_status(prepared.state_dir, status)

                    def on_report(report: RoundReport) -> None:
                        recorder.begin_round(
                            report.round,
                            roster_version=roster.version,
                            mode=config.rounds.mode,
                            cohort=report.cohort,
                        )
                        for e in report.exclusions:
                            recorder.exclude(report.round, e.peer, e.reason, e.detail, e.count)
                        if report.committed:
                            record = recorder.finish_round(
                                report.round,
                                tensors_from_flat(
                                    trainer.layout.names, trainer.layout.shapes, peer.weights
                                ),
                                dp=DPRecord(
                                    noise_multiplier=sigma if ledger else 0.0,
                                    clip_norm=p.clip_norm,
                                    sample_rate=report.sample_rate,
                                    delta=p.delta,
                                    epsilon=report.epsilon or 0.0,
                                    accountant=config.accountant if ledger else "off",
                                    steps=report.steps,
                                    epsilon_budget=p.epsilon_budget if ledger else None,
                                    ledger_head=ledger.head().to_dict() if ledger else None,
                                ),
                                metrics={
                                    "accuracy": report.test_accuracy,
                                    "loss": report.test_loss,
                                    "bytes_sent": float(report.bytes_sent),
                                },
                                duration_s=report.duration_s,
                                bytes_sent=report.bytes_sent,
                                certificate=report.certificate,
                            )
                            status["model_version"] = record.manifest.version
                            status["drift_alerts"] = [a.to_dict() for a in record.alerts]
                        else:
                            recorder.fail_round(
                                report.round, duration_s=report.duration_s, reason=report.reason
                            )
                        if recorder.metrics is not None:
                            recorder.metrics.set_peers(len(transport.connected_peers()))
                        status.update(
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
                            model_digest=report.model_digest,
                            test_accuracy=report.test_accuracy,
                        )
                        write_status(prepared.state_dir, status)
                        log.info(
                            "round %d %s: accuracy %.3f, eps %s, %d contributors",
                            report.round,
                            "committed" if report.committed else f"missed ({report.reason})",
                            report.test_accuracy,
                            "off" if report.epsilon is None else f"{report.epsilon:.3f}",
                            report.contributors,
                        )

                    async def run_rounds() -> None:
                        nonlocal status
                        if rebuilt:
                            behind = await announcer.wait_in_step(
                                peers, config.rounds.round_timeout_s
                            )
                            if behind:
                                log.warning(
                                    "starting roster version %d's rounds while %s still hold "
                                    "an older version",
                                    roster.version,
                                    ", ".join(behind),
                                )
                        try:
                            await peer.run(
                                config.rounds.rounds,
                                on_report,
                                startup_timeout=config.rounds.round_timeout_s,
                                min_peers=config.rounds.min_peers,
                            )
                        except BudgetExceededError as exc:
                            status |= {"state": "budget-exhausted", "error": str(exc)}
                            status["stop_reason"] = "budget exhausted"
                            log.error("%s", exc)
                        except RosterError as exc:
                            if not roster_expired(status, exc):
                                raise
                        else:
                            status |= {"state": "finished", "stop_reason": "finished"}
                        status |= {
                            "completed_round": peer.model_round,
                            "epsilon": peer.epsilon,
                            "model_digest": weights_digest(peer.weights).hex(),
                        }

                    if await run_unless(wake, run_rounds):
                        return True
                    peer.abandon()
                    log.warning(
                        "roster version %d in force: round %d abandoned, rebuilding the cohort",
                        prepared.gate.roster.version,
                        peer.next_round - 1,
                    )
                    return False

                rebuilt = False
                while True:
                    changed[0] = trio.Event()
                    if await one_membership(changed[0], rebuilt):
                        break
                    rebuilt = True
                background.cancel_scope.cancel()
    except BaseException as exc:
        # Before serve's callbacks write status.json and daemon_stop. trio delivers a cancel
        # inside an exception group, which ``except trio.Cancelled`` would not see.
        ended(status, exc)
        raise


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
