"""The composed Peer over the in-memory network: rounds, agreement of models, recovery."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import topologies
from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.secure_gossip import SecureGossipService
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.identity import Identity
from p2pfed.node import Aggregator, GossipAggregator, Peer, SecureRingAggregator
from p2pfed.privacy import NoiseMode, PrivacyLedger
from p2pfed.privacy.release import PrivateReleaser
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.training import (
    Dataset,
    LocalTrainer,
    TrainingConfig,
    build_model,
    dirichlet_split,
    load_builtin,
    train_test_split,
)
from p2pfed.transport import MemoryNetwork

pytestmark = pytest.mark.slow


def scaled_breast_cancer() -> tuple[Dataset, Dataset]:
    train, test = train_test_split(load_builtin("breast_cancer"), 0.25, np.random.default_rng(0))
    mu, sd = train.x.mean(0), train.x.std(0) + 1e-6

    def scale(d: Dataset) -> Dataset:
        return Dataset((d.x - mu) / sd, d.y, d.feature_names, d.name)

    return scale(train), scale(test)


class Consortium:
    def __init__(
        self,
        tmp: Path,
        n: int,
        *,
        hidden: tuple[int, ...] = (),
        personal: tuple[str, ...] = (),
        gossip: str = "",
        virtual_clock: bool = False,
    ) -> None:
        # On trio's autojump clock, time leaps while a worker thread trains: train inline.
        self.train_in_thread = not virtual_clock
        self.gossip = gossip
        self.tmp = tmp
        self.ids = [Identity.generate() for _ in range(n)]
        self.keys = {i.peer_id: i.public_key for i in self.ids}
        self.train, self.test = scaled_breast_cancer()
        self.parts = dirichlet_split(self.train.y, n, 1.0, np.random.default_rng(1), min_size=40)
        self.net = MemoryNetwork()
        self.hidden, self.personal = hidden, personal
        self.ledgers: dict[int, PrivacyLedger] = {}

    @asynccontextmanager
    async def peer(self, k: int, on_refusal: Any = None) -> AsyncIterator[Peer]:
        ident = self.ids[k]
        async with self.net.open(ident.peer_id) as transport:
            secure = SecureRingRound(
                transport,
                "test",
                1,
                self.keys,
                ident,
                Ed25519CohortSigner(ident.seed, self.keys),
                stage_timeout=2.0,
            )
            n = len(self.ids)
            aggregator: Aggregator = SecureRingAggregator(
                secure, FixedPoint(), n, (n + 1) // 2 + 1, np.random.default_rng(k)
            )
            # The consistency quorum for collusion bound 1: more than (n + 1)/2 members.
            assert secure.min_survivors == aggregator.guaranteed_contributors == (n + 1) // 2 + 1
            if self.gossip:
                service = SecureGossipService(
                    transport,
                    "test",
                    sorted(self.keys),
                    topologies.build(self.gossip, n),
                    self.keys,
                    ident,
                    stage_timeout=2.0,
                    rng=np.random.default_rng(k),
                )
                aggregator = GossipAggregator(service, secure=True)
            kind = "mlp" if self.hidden else "logistic"
            trainer = LocalTrainer(
                build_model(kind, 30, 2, hidden=self.hidden or (1,), seed=0),
                TrainingConfig(learning_rate=0.2, personal_prefixes=self.personal),
                torch.Generator().manual_seed(k),
                train=self.train.subset(self.parts[k]),
                test=self.test,
            )
            ledger = PrivacyLedger(self.tmp / f"ledger-{k}", 1e6, 1e-5)
            self.ledgers[k] = ledger
            releaser = PrivateReleaser(
                ledger,
                clip_norm=5.0,
                noise_multiplier=0.05,
                mode=NoiseMode.DISTRIBUTED,
                n_peers=n,
                min_peers=aggregator.guaranteed_contributors,
                rng=np.random.default_rng(50 + k),
            )
            try:
                yield Peer(
                    transport=transport,
                    consortium="test",
                    members=list(self.keys),
                    trainer=trainer,
                    aggregator=aggregator,
                    releaser=releaser,
                    state_dir=self.tmp / f"state-{k}",
                    signer=Ed25519CohortSigner(ident.seed, self.keys),
                    roster_version=1,
                    on_refusal=on_refusal,
                    train_in_thread=self.train_in_thread,
                )
            finally:
                ledger.close()


async def test_peers_agree_on_every_round(tmp_path: Path) -> None:
    c = Consortium(tmp_path, 3)
    peers: list[Peer] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def one(k: int) -> None:
                async with c.peer(k) as peer:
                    peers.append(peer)
                    reports = await peer.run(4, startup_timeout=5.0)
                    assert [r.round for r in reports] == [0, 1, 2, 3]
                    assert all(r.committed and r.contributors == 3 for r in reports)
                    assert reports[-1].test_accuracy > 0.9
                    # Each round says where its time went, stage by stage, in order.
                    for r in reports:
                        names = [name for name, _ in r.stages_s]
                        secure = ["mask", "all-reduce", "unmask", "decode"]
                        assert names == ["train", *secure, "commit", "evaluate"]
                        seconds = sum(s for _, s in r.stages_s)
                        assert 0 <= seconds <= r.duration_s + 1e-9

            for k in range(3):
                nursery.start_soon(one, k)
    assert {p.model_round for p in peers} == {3}
    assert len({p.weights.tobytes() for p in peers}) == 1  # the same model everywhere
    # Every release was recorded before it left: one ledger record per round and peer, each
    # one Gaussian release of the whole update (not one per local minibatch).
    for k in range(3):
        records = c.ledgers[k].records
        assert len(records) == 4
        assert {(r.release.sample_rate, r.release.steps) for r in records} == {(1.0, 1)}


async def test_a_crashed_peer_restarts_and_catches_up(tmp_path: Path) -> None:
    c = Consortium(tmp_path, 4)
    finals: dict[int, Peer] = {}
    crashed = trio.Event()
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:

            async def steady(k: int) -> None:
                async with c.peer(k) as peer:
                    await peer.run(6, startup_timeout=5.0)
                    finals[k] = peer

            async def victim() -> None:
                async with c.peer(3) as peer:

                    def on_report(report: object) -> None:
                        if peer.model_round >= 1:
                            c.net.crash(c.ids[3].peer_id)  # as SIGKILL: cancels this block
                            crashed.set()

                    await peer.run(6, on_report, startup_timeout=5.0)
                    raise AssertionError("the crashed peer finished its run")
                assert peer.model_round < 5  # the crash ended it mid-run

            for k in range(3):
                nursery.start_soon(steady, k)
            nursery.start_soon(victim)
            await crashed.wait()
            c.ledgers[3].close()  # a killed process releases its ledger lock
            await trio.sleep(0.5)
            async with c.peer(3) as restarted:
                assert restarted.model_round >= 1  # resumed from its checkpoint
                await restarted.run(6, startup_timeout=5.0)
                finals[3] = restarted
    assert {p.model_round for p in finals.values()} == {5}
    assert len({p.weights.tobytes() for p in finals.values()}) == 1


async def test_personal_layers_stay_home(tmp_path: Path) -> None:
    c = Consortium(tmp_path, 3, hidden=(8,), personal=("2.",))
    peers: list[Peer] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def one(k: int) -> None:
                async with c.peer(k) as peer:
                    assert peer.weights.size == 30 * 8 + 8  # only the shared layer is exchanged
                    peers.append(peer)
                    await peer.run(2, startup_timeout=5.0)

            for k in range(3):
                nursery.start_soon(one, k)
    assert len({p.weights.tobytes() for p in peers}) == 1
    heads = {p.trainer.model[2].weight.detach().numpy().tobytes() for p in peers}
    assert len(heads) == 3  # each hospital's output layer is its own


async def test_a_diverged_peer_adopts_the_majority_model(tmp_path: Path) -> None:
    c = Consortium(tmp_path, 3)
    peers: dict[int, Peer] = {}
    done = trio.Event()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def one(k: int) -> None:
                async with c.peer(k) as peer:
                    await peer.run(2, startup_timeout=5.0)
                    peers[k] = peer
                    await done.wait()  # keep serving the model while the test checks

            for k in range(3):
                nursery.start_soon(one, k)
            while len(peers) < 3:
                await trio.sleep(0.05)
            odd = peers[0]
            odd._adopt(odd.model_round, odd.weights + 0.5)  # as if it committed another sum
            assert await odd.reconcile()
            assert odd.weights.tobytes() == peers[1].weights.tobytes()
            assert not await peers[1].reconcile()  # the majority keeps its model
            done.set()


async def test_secure_gossip_mode_converges_without_exact_agreement(tmp_path: Path) -> None:
    c = Consortium(tmp_path, 4, gossip="ring")
    peers: list[Peer] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def one(k: int) -> None:
                async with c.peer(k) as peer:
                    reports = await peer.run(6, startup_timeout=5.0)
                    assert all(r.committed for r in reports)
                    assert reports[-1].test_accuracy > 0.85
                    # gossip reports no stages of its own: the time is the whole exchange
                    assert all("aggregate" in dict(r.stages_s) for r in reports)
                    peers.append(peer)

            for k in range(4):
                nursery.start_soon(one, k)
    stacked = np.stack([p.weights for p in peers])
    spread = np.linalg.norm(stacked - stacked.mean(0)) / np.linalg.norm(stacked.mean(0))
    assert 0 < spread < 1.0  # different models (non-IID local steps), in one neighbourhood


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0, 1e9, allow_nan=False),
    st.floats(0, 0.999),
    st.floats(0.01, 0.98),
    st.floats(0.01, 0.98),
    st.sampled_from([10.0, 12.0, 30.0, 60.0]),
)
def test_members_that_missed_at_different_times_realign_within_three_slots(
    t1: float, apart: float, took1: float, took2: float, slot: float
) -> None:
    """Each member's missed rounds last ``took`` of a slot, more than half of it included."""
    from p2pfed.node.peer import slot_wait

    # Two members missed the same round less than a slot apart.
    t2 = t1 + apart * slot
    took = {1: took1 * slot, 2: took2 * slot}
    starts = {1: t1 + slot_wait(t1, slot, took[1]), 2: t2 + slot_wait(t2, slot, took[2])}
    for start in starts.values():
        assert min(start % slot, slot - start % slot) < 1e-3  # on a boundary
    assert starts[1] - t1 <= 1.5 * slot + 1e-6
    for _ in range(2):  # the early one attempts alone, misses as slowly, and waits again
        if abs(starts[1] - starts[2]) < 1e-3:
            break
        k = min(starts, key=starts.__getitem__)
        missed = starts[k] + took[k]
        starts[k] = missed + slot_wait(missed, slot, took[k])
    assert starts[1] == pytest.approx(starts[2], abs=1e-3)
