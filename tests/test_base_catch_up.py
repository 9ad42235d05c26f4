"""Peers on a stale base model are left out of the round and catch up (the composed Peer).

A member whose model is a round behind (it missed a round and did not catch up, as one that
took a new roster version first and refused the others' round) would add the round's sum to
its own older model. Here it is left out of the cohort, misses the round, fetches the
certified model and sums with the others again; no round ever ends with two models.
Slow: two in-memory consortia of composed peers, 25 to 45 s together (load-dependent).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
from test_node import Consortium

from p2pfed.collectives.round import RingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import ReasonCode
from p2pfed.node import Peer
from p2pfed.node.aggregators import RingAggregator
from p2pfed.node.report import RoundReport
from p2pfed.training import LocalTrainer, TrainingConfig, build_model

pytestmark = pytest.mark.slow


PeerFactory = Callable[[int], AbstractAsyncContextManager[Peer]]


async def run_with_a_rollback(
    make: PeerFactory, n: int, stale: int, at: int, rounds: int, wait: float = 5.0
) -> tuple[dict[int, list[RoundReport]], dict[int, Peer]]:
    """Run ``rounds`` rounds; after round ``at`` member ``stale`` goes back one model."""
    reports: dict[int, list[RoundReport]] = {k: [] for k in range(n)}
    peers: dict[int, Peer] = {}
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:

            async def one(k: int) -> None:
                async with make(k) as peer:
                    before = (peer.model_round, peer.weights, peer.certificate)

                    def on_report(report: RoundReport) -> None:
                        nonlocal before
                        reports[k].append(report)
                        if k == stale and report.round == at:
                            peer._adopt(*before)  # as if it had missed round `at`
                        before = (peer.model_round, peer.weights, peer.certificate)

                    await peer.run(rounds, on_report, startup_timeout=wait)
                    peers[k] = peer

            for k in range(n):
                nursery.start_soon(one, k)
    return reports, peers


def one_model_per_round(reports: dict[int, list[RoundReport]]) -> dict[int, int]:
    """Round → how many members committed it, checking they all hold one model."""
    digests: dict[int, set[str]] = {}
    for rs in reports.values():
        for r in rs:
            if r.committed:
                digests.setdefault(r.round, set()).add(r.model_digest)
    assert all(len(d) == 1 for d in digests.values()), digests
    return {
        rnd: sum(r.committed and r.round == rnd for rs in reports.values() for r in rs)
        for rnd in digests
    }


async def test_a_member_on_a_stale_base_is_left_out_catches_up_and_rejoins(
    tmp_path: Path,
) -> None:
    c = Consortium(tmp_path, 4)
    reports, peers = await run_with_a_rollback(c.peer, 4, stale=3, at=1, rounds=4)
    missed = next(r for r in reports[3] if r.round == 2)
    assert not missed.committed
    assert (c.ids[3].peer_id, ReasonCode.STALE_BASE) in {
        (e.peer, e.reason) for e in missed.exclusions
    }
    for k in range(3):  # the others summed without it, and it was named
        r2 = next(r for r in reports[k] if r.round == 2)
        assert r2.committed and c.ids[3].peer_id not in r2.cohort and r2.contributors == 3
    assert one_model_per_round(reports)[3] == 4  # caught up: all four sum round 3 again
    assert {p.model_round for p in peers.values()} == {3}
    assert len({p.weights.tobytes() for p in peers.values()}) == 1


def plain_ring_peers(c: Consortium) -> PeerFactory:
    """Peers summing in the clear (secure aggregation needs three): a cohort needs two."""

    @asynccontextmanager
    async def make(k: int) -> AsyncIterator[Peer]:
        ident = c.ids[k]
        async with c.net.open(ident.peer_id) as transport:
            signer = Ed25519CohortSigner(ident.seed, c.keys)
            ring = RingRound(transport, "test", 1, sorted(c.keys), signer, min_cohort=2)
            trainer = LocalTrainer(
                build_model("logistic", 30, 2, hidden=(1,), seed=0),
                TrainingConfig(learning_rate=0.2),
                torch.Generator().manual_seed(k),
                train=c.train.subset(c.parts[k]),
                test=c.test,
            )
            yield Peer(
                transport=transport,
                consortium="test",
                members=list(c.keys),
                trainer=trainer,
                aggregator=RingAggregator(ring),
                releaser=None,
                state_dir=c.tmp / f"state-{k}",
                signer=signer,
                roster_version=1,
            )

    return make


async def test_two_members_on_different_bases_do_not_commit_two_models(tmp_path: Path) -> None:
    """Too few for a quorum to disagree: without the base in the agreement each kept its own."""
    c = Consortium(tmp_path, 2)
    make = plain_ring_peers(c)
    reports, peers = await run_with_a_rollback(make, 2, stale=1, at=0, rounds=3, wait=2.0)
    counts = one_model_per_round(reports)
    assert counts[0] == 2 and 1 not in counts  # round 1, on two bases, commits nowhere
    # The stale member caught up to the certified model: one model between them again.
    assert len({p.weights.tobytes() for p in peers.values()}) == 1
    assert np.all(np.isfinite(peers[0].weights))
