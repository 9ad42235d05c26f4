"""Builders: the parts of a running node, one function per part, from what ``prepare`` checked.

Theory of operation: the daemon is composition only. ``build_trainer`` makes the local
model and trainer, ``build_transport`` the libp2p host, ``cohort_of`` the membership of the
roster in force (keys, session, cohort signer), ``build_aggregator`` the aggregation the
config asks for (ring or gossip, in the clear or under secure aggregation, with the
discrete Gaussian encoder under distributed DP), ``build_releaser`` the privacy release
over the ledger, and ``build_peer`` the ``Peer`` that runs the rounds. Each takes plain
inputs and returns one object, so a custom peer can reuse any of them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

import topologies
from p2pfed.collectives.gossip import place_peers
from p2pfed.collectives.gossip_driver import GossipConfig, GossipService
from p2pfed.collectives.ring_driver import RingConfig
from p2pfed.collectives.round import RingRound
from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.secure_gossip import SecureGossipService
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.config import Config
from p2pfed.daemon.prepare import Prepared, parse_listen, secagg_plan
from p2pfed.daemon.reporter import RoundReporter
from p2pfed.errors import ConfigError
from p2pfed.identity import Member, Role, Roster
from p2pfed.node.aggregators import (
    Aggregator,
    GossipAggregator,
    RingAggregator,
    SecureRingAggregator,
    examples_weight,
)
from p2pfed.node.deadlines import DeadlinePolicy, Paced, PacedAggregator
from p2pfed.node.roster_sync import session_id, sync_session_id
from p2pfed.privacy import NoiseMode, PrivacyLedger
from p2pfed.privacy.ddg import DDGPlan, secure_ring_encoder
from p2pfed.privacy.release import PrivateReleaser
from p2pfed.secagg.compression import ErrorFeedback, QuantisedEncoder, level_bits_of
from p2pfed.secagg.fixedpoint import FixedPoint

if TYPE_CHECKING:
    from p2pfed.node.peer import Peer
    from p2pfed.training.trainer import LocalTrainer
    from p2pfed.transport.libp2p import Libp2pTransport
    from p2pfed.transport.libp2p_relayed import RelayedTransport


def class_count(prepared: Prepared) -> int:
    """Classes the model predicts: the schema's labels, or the largest label seen plus one."""
    return max(len(prepared.config.schema.labels), int(prepared.train.y.max()) + 1)


def build_trainer(prepared: Prepared) -> LocalTrainer:
    """The local model and its trainer (DP-SGD when ``[privacy] mode = "dp-sgd"``).

    torch loads here, not when this module does: ``daemon.serve`` listens first and calls
    this in a worker thread.
    """
    import torch

    from p2pfed.training.models import build_model, check_fits, load_torchscript, model_from_factory
    from p2pfed.training.trainer import DPSGD, LocalTrainer

    config, m = prepared.config, prepared.config.model
    n_features, n_classes = prepared.train.n_features, class_count(prepared)
    shape = prepared.train.shape if len(prepared.train.shape) > 1 else ()
    if m.torchscript:
        if config.privacy.mode == "dp-sgd":
            raise ConfigError(
                '[model] torchscript cannot train under [privacy] mode = "dp-sgd": per-example '
                "gradients (torch.func) cannot call a TorchScript module; use a [model] factory"
            )
        model = load_torchscript(config.path(m.torchscript))
        check_fits(model, m.torchscript, n_features, n_classes, shape)
    elif m.factory:
        model = model_from_factory(m.factory, dict(m.args), m.seed)
        check_fits(model, m.reference(), n_features, n_classes, shape)
    else:
        model = build_model(m.kind, n_features, n_classes, m.hidden, m.seed)
        if shape:  # a built-in takes rows: images reach it only by mistake
            check_fits(model, m.kind, n_features, n_classes, shape)
    return LocalTrainer(
        model,
        config.training,
        torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little")),
        dp_sgd=(
            DPSGD(config.privacy.sample_rate, config.privacy.clip_norm, prepared.sigma)
            if config.privacy.mode == "dp-sgd"
            else None
        ),
        train=prepared.train,
        test=prepared.test,
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


def build_transport(prepared: Prepared) -> RelayedTransport:
    """The libp2p host on ``[network] listen``, gated by the roster, dialling its members.

    It holds a reservation on each relay the roster lists and dials through them what it
    cannot reach directly.
    """
    # Lazily: libp2p takes seconds to import, and `p2pfed status` imports this package.
    from p2pfed.transport.libp2p_relayed import RelayedTransport

    config, identity = prepared.config, prepared.identity
    host, port = parse_listen(config.network.listen)
    roster = prepared.gate.roster
    relays = {
        m.peer_id: list(m.addresses)
        for m in roster.members
        if m.role is Role.RELAY and m.peer_id != identity.peer_id
    }
    return RelayedTransport(
        identity.seed,
        prepared.gate,
        host=host,
        port=port,
        peer_addrs=peer_addresses(config, members_of(roster), identity.peer_id),
        relays=relays,
        hole_punch=config.network.hole_punch,
        # A member the roster lists addresses for checks that others can dial them.
        own_addrs=next((m.addresses for m in roster.members if m.peer_id == identity.peer_id), ()),
    )


def members_of(roster: Roster) -> dict[str, Member]:
    """Peer ID → member, for the roster's members (admins take no part in rounds)."""
    return {m.peer_id: m for m in roster.members if m.role is Role.MEMBER}


@dataclass(frozen=True)
class Cohort:
    """The members of the roster in force, as the round protocols need them."""

    roster: Roster
    peers: list[str]
    """Member peer IDs, sorted."""
    keys: dict[str, bytes]
    session: str
    """Aggregation messages of another roster version's cohort are refused."""
    signer: Ed25519CohortSigner
    relayed: frozenset[str] = frozenset()
    """Members behind NAT (the roster lists no address for them): the ring keeps them apart."""


def protocol_hash(prepared: Prepared) -> str:
    """The verified study protocol's hash, or "" for a node without one."""
    return prepared.protocol.digest() if prepared.protocol else ""


def compression_tag(config: Config) -> str:
    """Joins the session id: a member declaring another compression is refused, not summed."""
    compression = config.rounds.compression
    return "" if compression == "none" else f"+{compression}"


def cohort_of(prepared: Prepared) -> Cohort | None:
    """The cohort of the roster in force; None when this node is no longer a member."""
    roster = prepared.gate.roster
    members = members_of(roster)
    if prepared.identity.peer_id not in members:
        return None
    keys = {pid: m.public_key for pid, m in members.items()}
    return Cohort(
        roster,
        sorted(members),
        keys,
        session_id(
            roster.consortium_id,
            roster.version,
            protocol_hash(prepared),
            tag=compression_tag(prepared.config),
        ),
        Ed25519CohortSigner(prepared.identity.seed, keys),
        relayed_members(roster),
    )


def relayed_members(roster: Roster) -> frozenset[str]:
    """Members the roster lists no address for: behind NAT, reached through a relay.

    Derived from the roster alone, so every member derives the same set (the ring order
    depends on it).
    """
    return frozenset(pid for pid, m in members_of(roster).items() if not m.addresses)


def build_aggregator(
    prepared: Prepared, transport: Libp2pTransport, cohort: Cohort, dimension: int
) -> tuple[Aggregator, DDGPlan | None]:
    """The aggregation ``[rounds] mode`` and ``[secagg]`` ask for, and its noise plan if any."""
    config = prepared.config
    n = len(cohort.peers)
    # A secure sum completes only with the consistency quorum (more than (n + collusion)/2
    # members, at least min_contributors and min_peers) in it: distributed DP noise is split
    # over that many shares.
    min_survivors, min_contributors, threshold = config.rounds.min_peers, 3, 0
    if config.secagg.enabled:
        plan = secagg_plan(config, cohort.peers)
        min_survivors = max(min_survivors, plan.min_survivors)
        min_contributors, threshold = plan.min_contributors, plan.threshold
    stage_timeout = config.rounds.stage_floor_s
    fixed_point = FixedPoint(clip=config.secagg.clip_range, ring_bits=config.secagg.bits)
    rounds = config.rounds
    weight = None
    if rounds.weighting == "examples":
        weight = examples_weight(len(prepared.train), rounds.max_examples)
    if config.rounds.mode == "gossip":
        service = build_gossip(
            prepared, transport, cohort, fixed_point, stage_timeout, min_contributors
        )
        gossip = GossipAggregator(service, config.secagg.enabled)
        if isinstance(service, SecureGossipService):
            return paced(gossip, service, config, dimension), None
        return gossip, None
    if not config.secagg.enabled:
        return RingAggregator(
            RingRound(
                transport,
                cohort.session,
                cohort.roster.version,
                cohort.peers,
                cohort.signer,
                relayed=cohort.relayed,
                min_cohort=config.rounds.min_peers,  # a lone member's sum is no round
            ),
            weight,
        ), None
    levels = level_bits_of(config.rounds.compression)
    quantised = QuantisedEncoder(config.secagg.clip_range, levels, n) if levels else None
    ring = RingConfig(modulus_bits=quantised.width) if quantised else None
    ring_round = RingRound(
        transport,
        cohort.session,
        cohort.roster.version,
        cohort.peers,
        cohort.signer,
        ring_config=ring,
        relayed=cohort.relayed,
    )
    secure = SecureRingRound(
        transport,
        cohort.session,
        cohort.roster.version,
        cohort.keys,
        prepared.identity,
        cohort.signer,
        stage_timeout=stage_timeout,
        threshold=config.secagg.threshold or None,
        collusion=config.secagg.collusion,
        min_contributors=config.secagg.min_contributors or None,
        ring_round=ring_round,
    )
    if quantised is not None:  # prepare refuses compression with distributed DP
        feedback = ErrorFeedback()  # in memory: restarts at zero with the daemon
        return paced(
            SecureRingAggregator(
                secure, quantised, n, min_survivors, np.random.default_rng(), feedback=feedback
            ),
            secure,
            config,
            dimension,
            quantised.width,
        ), None
    encoder, discrete = secure_ring_encoder(
        fixed_point,
        distributed=config.privacy.mode == "distributed",
        collusion=config.secagg.collusion,
        threshold=threshold,
        n_peers=n,
        min_contributors=min_survivors,
        dimension=dimension,
        clip_norm=config.privacy.clip_norm,
        noise_multiplier=prepared.sigma,
    )
    aggregator = SecureRingAggregator(
        secure, encoder, n, min_survivors, np.random.default_rng(), weight
    )
    return paced(aggregator, secure, config, dimension), discrete


def paced(
    inner: Aggregator, service: Paced, config: Config, dimension: int, bits: int = 0
) -> Aggregator:
    """``inner`` with stage deadlines derived from each round's measured cost."""
    rounds = config.rounds
    policy = DeadlinePolicy(
        floor_s=rounds.stage_floor_s,
        ceiling_s=rounds.stage_ceiling_s,
        assumed_rate=rounds.link_mbps * 1e6 / 8,
    )
    # A ring all-reduce sends about twice the update; a word is ceil(bits / 8) bytes, or
    # bits / 8 when packed.
    update_bytes = 2 * -(-dimension * (bits or 8 * -(-config.secagg.bits // 8)) // 8)
    return PacedAggregator(inner, service, policy, update_bytes, time.monotonic)


def build_gossip(
    prepared: Prepared,
    transport: Libp2pTransport,
    cohort: Cohort,
    fixed_point: FixedPoint,
    stage_timeout: float,
    min_contributors: int,
) -> GossipService | SecureGossipService:
    """Gossip averaging over ``[rounds] topology``, inside secure groups under ``[secagg]``."""
    config = prepared.config
    topology = topologies.build(config.rounds.topology, len(cohort.peers))
    # Members behind NAT on nodes that share few edges: most links stay direct.
    peers = place_peers(cohort.peers, cohort.relayed, topology.n, topology.union_graph().edges)
    if config.secagg.enabled:
        return SecureGossipService(
            transport,
            cohort.session,
            peers,
            topology,
            cohort.keys,
            prepared.identity,
            fixed_point=fixed_point,
            stage_timeout=stage_timeout,
            rng=np.random.default_rng(),
            min_contributors=min_contributors,
            collusion=config.secagg.collusion,
        )
    return GossipService(
        transport,
        cohort.session,
        peers,
        topology,
        relayed=cohort.relayed,
        config=GossipConfig(
            deadline=stage_timeout,
            timeout=stage_timeout,
            robust=config.rounds.robust,
            byzantine_neighbours=config.rounds.byzantine_neighbours,
        ),
    )


def build_releaser(
    config: Config,
    ledger: PrivacyLedger | None,
    sigma: float,
    n_peers: int,
    aggregator: Aggregator,
    discrete: DDGPlan | None,
) -> PrivateReleaser | None:
    """The privacy release over the ledger (None with ``[privacy] mode = "off"``)."""
    if ledger is None:
        return None
    p = config.privacy
    return PrivateReleaser(
        ledger,
        clip_norm=p.clip_norm,
        noise_multiplier=sigma,
        mode=NoiseMode(p.mode),
        n_peers=n_peers,
        min_peers=aggregator.guaranteed_contributors,
        discrete=discrete,
    )


def build_peer(
    prepared: Prepared,
    transport: Libp2pTransport,
    cohort: Cohort,
    trainer: LocalTrainer,
    ledger: PrivacyLedger | None,
    reporter: RoundReporter,
) -> Peer:
    """The ``Peer`` that runs this cohort's rounds, reporting through ``reporter``."""
    from p2pfed.node.peer import Peer  # torch, which the trainer has loaded by now

    config = prepared.config
    aggregator, discrete = build_aggregator(prepared, transport, cohort, trainer.layout.size)
    releaser = build_releaser(
        config, ledger, prepared.sigma, len(cohort.peers), aggregator, discrete
    )
    return Peer(
        transport=transport,
        consortium=cohort.roster.consortium_id,
        members=cohort.peers,
        trainer=trainer,
        aggregator=aggregator,
        releaser=releaser,
        state_dir=prepared.state_dir,
        signer=cohort.signer,
        roster_version=cohort.roster.version,
        certificate_floor=max(2, config.rounds.min_peers),
        # The wait for the votes stays short (a late vote still certifies the model), but a
        # vote not delivered is lost: its send gets the stage floor (10 s by default).
        vote_send_timeout=config.rounds.stage_floor_s,
        on_refusal=reporter.refused,
        on_certified=reporter.certified_late,
        guard=reporter.expiry_guard(),
        on_wait=reporter.waiting,
        sync_session=sync_session_id(cohort.roster.consortium_id, protocol_hash(prepared)),
    )
