"""``build_peer``: a custom peer on the real libp2p transport in one keyword-only call.

Theory of operation: the daemon's composition without its config file. From an identity,
the consortium's signed roster, a listen address and any ``Trainer``, it opens the libp2p
host (Noise, admitting the roster's members only), dials the members at their roster
addresses, and builds the aggregation (the secure ring by default, the plain ring with
``secagg=False``) and, with ``privacy``, the privacy ledger and release. It is an async
context manager: the transport is open, and the ledger usable, inside the ``async with``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from p2pfed.collectives.round import RingRound
from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.daemon.build import members_of
from p2pfed.daemon.prepare import parse_listen
from p2pfed.errors import ConfigError
from p2pfed.identity import Identity, Roster, RosterGate, RosterStore
from p2pfed.node import Peer, RingAggregator, SecureRingAggregator
from p2pfed.node.aggregators import Aggregator
from p2pfed.node.roster_sync import session_id
from p2pfed.privacy import NoiseMode, PrivacyLedger
from p2pfed.privacy.release import PrivateReleaser
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.secagg.params import SecAggConfig, plan_cohort
from p2pfed.training.state import Trainer
from p2pfed.transport.base import Transport


@dataclass(frozen=True)
class Privacy:
    """Differential privacy of each released update: clip, noise, and the budget it spends.

    ``mode``: ``distributed`` (each member adds a share of the noise; needs secure
    aggregation), ``local`` (each adds all of it) or ``dp-sgd`` (the trainer's DP-SGD
    already noised it, e.g. ``TorchTrainer(dpsgd=...)``; the ledger records its steps).
    """

    clip_norm: float
    noise_multiplier: float
    epsilon_budget: float
    delta: float = 1e-5
    mode: NoiseMode = NoiseMode.DISTRIBUTED
    accountant: str = "pld"


@asynccontextmanager
async def build_peer(
    *,
    identity: Identity,
    roster: Roster,
    listen: str,
    trainer: Trainer,
    state_dir: str | Path,
    secagg: bool = True,
    privacy: Privacy | None = None,
    stage_timeout: float = 10.0,
    min_cohort: int = 2,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AsyncIterator[Peer]:
    """A ``Peer`` of ``roster``'s consortium listening on ``listen`` (``/ip4/HOST/tcp/PORT``).

    ``roster`` must be signed by its admins (trusted on first use, then remembered under
    ``state_dir`` so it cannot be rolled back); ``identity`` must be one of its members.
    Checkpoints and the privacy ledger live in ``state_dir``. ``stage_timeout`` bounds each
    stage of a secure round. ``min_cohort`` (≥ 2, as the daemon's ``[rounds] min_peers``):
    no round commits a sum of fewer members, and a commit certificate needs at least that
    many signatures.
    """
    from p2pfed.transport.libp2p import Libp2pTransport  # libp2p takes seconds to import

    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    store = RosterStore(state / "roster-state.json")
    gate = RosterGate(store, store.accept(roster, now=clock()), clock)
    members = members_of(roster)
    if identity.peer_id not in members:
        raise ConfigError(f"identity {identity.peer_id} is not a member of the roster")
    if privacy is not None and privacy.mode is NoiseMode.DISTRIBUTED and not secagg:
        raise ConfigError("distributed noise needs secure aggregation: set secagg=True")
    if isinstance(min_cohort, bool) or not isinstance(min_cohort, int) or min_cohort < 2:
        raise ConfigError(f"min_cohort must be an integer ≥ 2, got {min_cohort!r}")
    host, port = parse_listen(listen)
    addrs = {p: list(m.addresses) for p, m in members.items() if p != identity.peer_id}
    keys = {p: m.public_key for p, m in members.items()}
    signer = Ed25519CohortSigner(identity.seed, keys)
    async with AsyncExitStack() as stack:
        transport = await stack.enter_async_context(
            Libp2pTransport(identity.seed, gate, host=host, port=port, peer_addrs=addrs)
        )
        aggregator = _aggregator(
            transport, roster, identity, signer, secagg, stage_timeout, min_cohort
        )
        releaser = None
        if privacy is not None:
            ledger = stack.enter_context(
                PrivacyLedger(
                    state / "privacy-ledger",
                    privacy.epsilon_budget,
                    privacy.delta,
                    privacy.accountant,
                )
            )
            releaser = PrivateReleaser(
                ledger,
                clip_norm=privacy.clip_norm,
                noise_multiplier=privacy.noise_multiplier,
                mode=privacy.mode,
                n_peers=len(keys),
                min_peers=aggregator.guaranteed_contributors,
            )
        yield Peer(
            transport=transport,
            consortium=roster.consortium_id,
            members=sorted(keys),
            trainer=trainer,
            aggregator=aggregator,
            releaser=releaser,
            state_dir=state,
            signer=signer,
            roster_version=roster.version,
            certificate_floor=min_cohort,
        )


def _aggregator(
    transport: Transport,
    roster: Roster,
    identity: Identity,
    signer: Ed25519CohortSigner,
    secagg: bool,
    stage_timeout: float,
    min_cohort: int,
) -> Aggregator:
    """The secure ring over the roster's members, or the plain ring without ``secagg``."""
    keys = {p: m.public_key for p, m in members_of(roster).items()}
    session = session_id(roster.consortium_id, roster.version)
    if not secagg:
        ring = RingRound(
            transport, session, roster.version, sorted(keys), signer, min_cohort=min_cohort
        )
        return RingAggregator(ring)
    secure = SecureRingRound(
        transport, session, roster.version, keys, identity, signer, stage_timeout=stage_timeout
    )
    # The fewest contributions a sum may hold: the protocol's consistency quorum, and never
    # fewer than min_cohort (as the daemon's min_survivors).
    plan = plan_cohort(SecAggConfig(session, 0, 1), frozenset(keys))
    fewest = max(min_cohort, plan.min_survivors)
    return SecureRingAggregator(secure, FixedPoint(), len(keys), fewest, np.random.default_rng())
