"""The distributed discrete Gaussian: plan, accounting against dp-accounting, encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy.ddg import (
    WRAP_BOUND,
    DDGPlan,
    DiscreteGaussianEncoder,
    ddg_rho,
    plan_ddg,
    rounding_bound,
    tau,
    zcdp_epsilon,
)
from p2pfed.privacy.rdp import DEFAULT_ORDERS
from p2pfed.privacy.sampling import ChaChaSource


def _plan(**kw: float) -> DDGPlan:
    args = dict(
        n_peers=3,
        min_contributors=2,
        collusion=1,
        dimension=64,
        clip_norm=1.0,
        noise_multiplier=1.0,
    )
    args.update(kw)
    return plan_ddg(**args)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 500),
    st.integers(1, 10**7),
    st.floats(0.3, 20.0),
    st.floats(1e-3, 1e3),
    st.data(),
)
def test_a_plan_never_lets_the_sum_wrap(
    n: int, d: int, z: float, clip: float, data: st.DataObject
) -> None:
    m = data.draw(st.integers(2, n))
    c = data.draw(st.integers(1, m - 1))
    plan = plan_ddg(
        n_peers=n,
        min_contributors=m,
        collusion=c,
        dimension=d,
        clip_norm=clip,
        noise_multiplier=z,
    )
    # Worst case per coordinate: all signal in it (n·Δ₂) plus the union-bounded noise tail.
    sd = math.sqrt(n * float(plan.local_variance))
    tail = math.sqrt(2 * math.log(2 * d / WRAP_BOUND))
    assert n * plan.sensitivity + tail * sd < 2 ** (plan.ring_bits - 1)
    assert plan.scale >= 50 * math.sqrt(d)  # rounding inflates Δ₂ by at most ~1 %
    assert plan.sensitivity <= plan.scale * 1.03


def test_impossible_plans_are_refused_in_one_sentence() -> None:
    with pytest.raises(ConfigError, match="collusion bound c = 2 must be below"):
        _plan(collusion=2)
    with pytest.raises(ConfigError, match="64-bit ring cannot hold"):
        _plan(n_peers=2**40, min_contributors=2, dimension=10**12)
    with pytest.raises(ConfigError, match="exceeds the number of peers"):
        _plan(min_contributors=4)


def test_insider_calibration_gives_the_planned_sigma_to_the_others() -> None:
    plan = _plan(n_peers=5, min_contributors=4, collusion=2, noise_multiplier=1.3)
    others = plan.min_contributors - plan.collusion
    assert float(plan.local_variance) * others >= (1.3 * plan.sensitivity) ** 2
    # τ is negligible at these variances, so the recorded multiplier is z itself.
    assert plan.release_noise_multiplier() == pytest.approx(1.3, rel=1e-9)
    assert plan.epsilon(1e-5, 10, against_insiders=False) < plan.epsilon(1e-5, 10)


def test_accounting_matches_dp_accounting_gaussian_where_tau_vanishes() -> None:
    rho = ddg_rho(sensitivity=100.0, variance=100.0**2 * 1.7**2, peers=1, dimension=10)
    acc = rdp_privacy_accountant.RdpAccountant(list(DEFAULT_ORDERS))
    acc.compose(dp_event.GaussianDpEvent(1.7), 20)
    assert zcdp_epsilon(rho, 1e-5, 20) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_tau_charges_small_variances_more_than_a_gaussian() -> None:
    assert tau(0.05, 3) > 1.0
    assert tau(100.0, 3) < 1e-300
    assert ddg_rho(1.0, 0.05, 3, 10) > ddg_rho(1.0, 0.05, 1, 10) / 3


def test_rounding_bound_is_the_papers() -> None:
    d, s, beta = 100, 1000.0, math.exp(-0.5)
    a = s * s + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (s + math.sqrt(d) / 2)
    assert rounding_bound(s, d) == pytest.approx(math.sqrt(min(a, (s + 10) ** 2)))


def test_encoder_round_trips_a_sum_and_refuses_bad_updates() -> None:
    plan = _plan(dimension=1000)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=1000) for _ in range(3)]
    xs = [x / np.linalg.norm(x) for x in xs]
    encoders = [DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(i)) for i in range(3)]
    words = [e.encode(x, None, 3) for e, x in zip(encoders, xs, strict=True)]
    total = sum(w.astype(np.uint64) for w in words) % np.uint64(2**32)
    got = encoders[0].decode_sum(total.astype(np.uint32), 3)
    sd = plan.gamma * math.sqrt(3 * float(plan.local_variance))
    assert abs(np.std(got - sum(xs)) / sd - 1) < 0.1
    rounded = encoders[0].round(xs[0])
    assert np.linalg.norm(rounded) <= plan.sensitivity
    with pytest.raises(DataError, match="exceeds the clip norm"):
        encoders[0].encode(xs[0] * 2, None, 3)
    with pytest.raises(DataError, match="vector of 1000 values"):
        encoders[0].encode(xs[0][:10], None, 3)
    with pytest.raises(ConfigError, match=r"covers 1\.\.3 peers"):
        encoders[0].encode(xs[0], None, 4)
