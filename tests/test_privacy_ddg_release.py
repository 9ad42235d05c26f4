"""The discrete Gaussian wired in: releaser accounting and a secure ring over the memory network."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import trio

from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import ConfigError
from p2pfed.identity import Identity
from p2pfed.node import Aggregate, SecureRingAggregator
from p2pfed.privacy import NoiseMode, PrivacyLedger
from p2pfed.privacy.ddg import DDGPlan, DiscreteGaussianEncoder, plan_ddg, secure_ring_encoder
from p2pfed.privacy.release import PrivateReleaser
from p2pfed.privacy.sampling import ChaChaSource
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.transport import MemoryNetwork

Z, S, D = 1.2, 1.0, 2000


def _plan(n: int = 3, m: int = 2, c: int = 1) -> DDGPlan:
    return plan_ddg(
        n_peers=n, min_contributors=m, collusion=c, dimension=D, clip_norm=S, noise_multiplier=Z
    )


def test_releaser_charges_the_insider_epsilon_and_leaves_noise_to_the_ring(tmp_path: Path) -> None:
    plan = _plan(n=4, m=3, c=1)
    rounds = 5
    with PrivacyLedger(tmp_path / "l", 100.0, 1e-5, "rdp") as ledger:
        releaser = PrivateReleaser(
            ledger,
            clip_norm=S,
            noise_multiplier=Z,
            mode=NoiseMode.DISTRIBUTED,
            n_peers=4,
            min_peers=3,
            discrete=plan,
        )
        update = np.full(D, 0.5, dtype=np.float32)
        for r in range(rounds):
            out = releaser.release(r, update)
            assert np.linalg.norm(out) <= S * (1 + 1e-6)
            assert np.allclose(out / np.linalg.norm(out), update / np.linalg.norm(update))
        sigma = ledger.records[-1].release.noise_multiplier
        assert sigma == pytest.approx(plan.release_noise_multiplier())
        insiders = plan.epsilon(1e-5, rounds)
        outsiders = plan.epsilon(1e-5, rounds, against_insiders=False)
        # zCDP composes as the Gaussian RDP curve: the RDP ledger charges the insider figure.
        assert ledger.spent_epsilon() == pytest.approx(insiders, rel=1e-6)
        assert outsiders < insiders


def test_releaser_refuses_a_plan_outside_distributed_mode(tmp_path: Path) -> None:
    with (
        PrivacyLedger(tmp_path / "l", 10.0, 1e-5) as ledger,
        pytest.raises(ConfigError, match="discrete Gaussian plan needs distributed mode"),
    ):
        PrivateReleaser(
            ledger,
            clip_norm=S,
            noise_multiplier=Z,
            mode=NoiseMode.LOCAL,
            discrete=_plan(),
        )
    with (
        PrivacyLedger(tmp_path / "m", 10.0, 1e-5) as ledger,
        pytest.raises(ConfigError, match="clip norm and noise multiplier"),
    ):
        PrivateReleaser(
            ledger,
            clip_norm=S,
            noise_multiplier=Z * 2,
            mode=NoiseMode.DISTRIBUTED,
            discrete=_plan(),
        )


def test_collusion_bound_must_be_below_the_threshold() -> None:
    kw = dict(
        distributed=True,
        n_peers=5,
        min_contributors=3,
        dimension=D,
        clip_norm=S,
        noise_multiplier=Z,
    )
    with pytest.raises(ConfigError, match=r"collusion = 3 must lie in 1\.\.2"):
        secure_ring_encoder(FixedPoint(), collusion=3, threshold=3, **kw)
    enc, plan = secure_ring_encoder(FixedPoint(), collusion=2, threshold=3, **kw)
    assert isinstance(enc, DiscreteGaussianEncoder) and plan is not None
    assert (
        secure_ring_encoder(FixedPoint(), collusion=9, threshold=3, **{**kw, "distributed": False})[
            1
        ]
        is None
    )


async def test_secure_ring_sums_discrete_noised_updates_over_the_memory_network() -> None:
    n = 3
    ids = [Identity.generate() for _ in range(n)]
    keys = {i.peer_id: i.public_key for i in ids}
    plan = _plan(n=n, m=3, c=1)
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=D) for _ in range(n)]
    updates = [(u / np.linalg.norm(u) * S).astype(np.float32) for u in updates]
    net = MemoryNetwork()
    results: dict[int, Aggregate] = {}

    async def one(k: int) -> None:
        async with net.open(ids[k].peer_id) as transport:
            secure = SecureRingRound(
                transport,
                "ddg",
                1,
                keys,
                ids[k],
                Ed25519CohortSigner(ids[k].seed, keys),
                stage_timeout=2.0,
            )
            encoder = DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(k))
            agg = SecureRingAggregator(secure, encoder, n, 3, np.random.default_rng(k))
            out = await agg.aggregate(0, updates[k], np.zeros(D, dtype=np.float32))
            assert isinstance(out, Aggregate)
            results[k] = out

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(one, k)
    means = {r.mean.tobytes() for r in results.values()}
    assert len(means) == 1  # every member decodes the same sum
    mean = results[0].mean.astype(np.float64)
    err = mean - sum(updates) / n
    # The sum carries n shares of σ_i² (integer units): std γ·√(n·σ_i²)/n per coordinate.
    sd = plan.gamma * math.sqrt(n * float(plan.local_variance)) / n
    assert abs(err.std() / sd - 1) < 0.1
