"""A first round whose local training outlasts the stage floor still commits (in-memory peers).

Three peers train for 3, 3 and 5 s of real time (a DP-SGD step at model scale, scaled
down), then run a secure round whose stage floor is 1 s: the fast two wait 2 s for the
slow one's key advertisement. Nothing has been measured yet in a first round, so only this
round's own training time can stretch the deadline (``PacedAggregator``); with the floor
alone the key exchange closes with two keys and the round aborts. About 8 s.
"""

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import trio

from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.identity import Identity
from p2pfed.node import Peer, SecureRingAggregator
from p2pfed.node.deadlines import DeadlinePolicy, PacedAggregator
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.training import LocalTrainer, TrainingConfig, build_model, load_builtin
from p2pfed.training.state import FitResult
from p2pfed.transport import MemoryNetwork

pytestmark = pytest.mark.slow

FLOOR_S = 1.0
TRAINING_S = (3.0, 3.0, 5.0)  # the last member arrives 2 s (twice the floor) after the others


class SlowTrainer(LocalTrainer):
    """A trainer whose ``fit`` takes ``seconds`` of wall time (in the peer's worker thread)."""

    def __init__(self, seconds: float, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.seconds = seconds

    def fit(self, state: Mapping[str, torch.Tensor], round: int) -> FitResult:
        time.sleep(self.seconds)  # stands for a long DP-SGD step, not a wait for an event
        return super().fit(state, round)


def test_a_first_round_whose_training_outlasts_the_floor_commits(tmp_path: Path) -> None:
    ids = [Identity.generate() for _ in TRAINING_S]
    keys = {i.peer_id: i.public_key for i in ids}
    data = load_builtin("breast_cancer")
    data = data.subset(np.arange(120), "rows")
    net = MemoryNetwork()
    reports = []

    async def member(k: int) -> None:
        ident = ids[k]
        async with net.open(ident.peer_id) as transport:
            signer = Ed25519CohortSigner(ident.seed, keys)
            secure = SecureRingRound(
                transport, "test", 1, keys, ident, signer, stage_timeout=FLOOR_S
            )
            inner = SecureRingAggregator(secure, FixedPoint(), 3, 3, np.random.default_rng(k))
            trainer = SlowTrainer(
                TRAINING_S[k],
                model=build_model("logistic", 30, 2, seed=0),
                config=TrainingConfig(learning_rate=1e-3),
                generator=torch.Generator().manual_seed(k),
                train=data,
            )
            size = trainer.layout.size
            policy = DeadlinePolicy(floor_s=FLOOR_S, ceiling_s=60.0, assumed_rate=1e9)
            paced = PacedAggregator(inner, secure, policy, 8 * size, trio.current_time)
            peer = Peer(
                transport=transport,
                consortium="test",
                members=list(keys),
                trainer=trainer,
                aggregator=paced,
                releaser=None,
                state_dir=tmp_path / f"state-{k}",
                signer=signer,
                roster_version=1,
            )
            reports.append(await peer.run_round())

    async def main() -> None:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for k in range(len(TRAINING_S)):
                    nursery.start_soon(member, k)

    trio.run(main)
    assert [(r.committed, r.contributors) for r in reports] == [(True, 3)] * 3, [
        r.reason for r in reports
    ]
    # Each member trained for longer than the floor before its deadline was set.
    assert all(dict(r.stages_s)["train"] > FLOOR_S for r in reports)


def test_pacing_a_long_stage_stretches_the_ring_agreements_waits_never_below_the_config() -> None:
    """A 2 s collect window fixes a cohort without a big model's late maskers: it grows."""
    ids = [Identity.generate() for _ in range(3)]
    keys = {i.peer_id: i.public_key for i in ids}

    async def main() -> None:
        async with MemoryNetwork().open(ids[0].peer_id) as transport:
            signer = Ed25519CohortSigner(ids[0].seed, keys)
            secure = SecureRingRound(transport, "test", 1, keys, ids[0], signer)
            base, ring = secure.ring_round.timing, secure.ring_round.ring_config
            control = secure.ring_round.control.timeout
            secure.pace(5.0)  # below the reference stage: the configured waits stay
            assert secure.stage_timeout == 5.0
            assert (secure.ring_round.timing, secure.ring_round.ring_config) == (base, ring)
            secure.pace(60.0)  # six times the reference: six times the waits
            timing = secure.ring_round.timing
            assert timing.collect_window == pytest.approx(6 * base.collect_window)
            assert timing.takeover_timeout == pytest.approx(6 * base.takeover_timeout)
            assert timing.commit_timeout == pytest.approx(6 * base.commit_timeout)
            assert secure.ring_round.ring_config.timeout == pytest.approx(6 * ring.timeout)
            assert secure.ring_round.control.timeout == pytest.approx(6 * control)
            assert secure.channel.timeout == 60.0  # secure aggregation's own messages
            secure.pace(10.0)  # and back: from the configured values, not compounded
            assert secure.ring_round.timing == base

    trio.run(main)
