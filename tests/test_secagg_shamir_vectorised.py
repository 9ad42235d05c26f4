"""The vectorised Shamir paths (split_many, combine_many, cached Lagrange weights).

The scalar reference below is the module's code before vectorisation (one secret, Horner
per holder, one inversion per Lagrange term): the vectorised paths must agree with it.
"""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError
from p2pfed.secagg import shamir

P = shamir.PRIME


def det_random(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def scalar_split(secret: bytes, t: int, xs, random_bytes) -> dict[int, bytes]:
    coefficients = [int.from_bytes(secret, "big")]
    while len(coefficients) < t:
        candidate = int.from_bytes(random_bytes(33), "big") & ((1 << 257) - 1)
        if candidate < P:
            coefficients.append(candidate)
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % P
        shares[x] = y.to_bytes(33, "big")
    return shares


def scalar_combine(shares: dict[int, bytes]) -> int:
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % P
                den = den * (xj - xi) % P
        secret = (secret + yi * num * pow(den, -1, P)) % P
    return secret


holder_sets = st.integers(1, 9).flatmap(
    lambda n: st.tuples(
        st.integers(1, n),
        st.lists(st.integers(1, shamir.MAX_SHARES), min_size=n, max_size=n, unique=True),
    )
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5), holder_sets)
def test_split_many_equals_the_scalar_split_secret_by_secret(secrets, holders):
    t, xs = holders
    vectorised = shamir.split_many(secrets, t, xs, det_random(7))
    reference_random = det_random(7)
    assert vectorised == [scalar_split(s, t, xs, reference_random) for s in secrets]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5), holder_sets, st.data()
)
def test_any_t_shares_rebuild_every_secret_and_equal_the_scalar_combine(secrets, holders, data):
    t, xs = holders
    dealt = shamir.split_many(secrets, t, xs, det_random(len(xs)))
    chosen = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=t, unique=True))
    rows = [[shares[x] for x in chosen] for shares in dealt]
    assert shamir.combine_many(chosen, rows) == list(secrets)
    for shares, secret in zip(dealt, secrets, strict=True):
        assert scalar_combine({x: shares[x] for x in chosen}) == int.from_bytes(secret, "big")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, shamir.MAX_SHARES), min_size=1, max_size=12, unique=True), st.data())
def test_lagrange_weights_interpolate_any_polynomial_at_zero(xs, data):
    coefficients = data.draw(st.lists(st.integers(0, P - 1), min_size=len(xs), max_size=len(xs)))
    values = [sum(c * pow(x, j, P) for j, c in enumerate(coefficients)) % P for x in xs]
    weights = shamir.lagrange_at_zero(tuple(xs))
    assert sum(w * v for w, v in zip(weights, values, strict=True)) % P == coefficients[0]


@settings(max_examples=40, deadline=None)
@given(holder_sets, st.binary(min_size=32, max_size=32), st.data())
def test_fewer_than_t_shares_rebuild_another_secret_or_none(holders, secret, data):
    t, xs = holders
    if t < 2:
        return
    shares = shamir.split(secret, t, xs, det_random(3))
    fewer = data.draw(st.lists(st.sampled_from(xs), min_size=1, max_size=t - 1, unique=True))
    rebuilt = shamir.combine_many(fewer, [[shares[x] for x in fewer]])[0]
    assert rebuilt != secret


@pytest.mark.parametrize("t", [2, 3, 5])
def test_fewer_than_t_shares_are_uniform_whatever_the_secret(t):
    # t − 1 shares of the all-zero and the all-one secret must be indistinguishable: the
    # low byte of every share the coalition holds has the same (uniform) distribution.
    # Chi-square over 256 bins, 4096 splits each; a zero or biased coefficient fails it.
    xs = list(range(1, t + 2))
    rb = det_random(t)
    for secret in (bytes(32), b"\xff" * 32):
        counts: Counter[int] = Counter()
        for shares in shamir.split_many([secret] * 4096, t, xs, rb):
            for x in xs[: t - 1]:
                counts[shares[x][-1]] += 1
        total = sum(counts.values())
        expected = total / 256
        chi2 = sum((counts[b] - expected) ** 2 / expected for b in range(256))
        assert chi2 < 340  # 255 degrees of freedom: p ≈ 0.0003 that a uniform source fails


def test_inconsistent_rows_are_marked_and_bad_rows_refused():
    shares = shamir.split(b"\x07" * 32, 2, [1, 2, 3], det_random(3))
    bad = (shamir.share_value(shares[2]) ^ 1).to_bytes(33, "big")
    good_row, bad_row = [shares[1], shares[2]], [shares[1], bad]
    result = shamir.combine_many([1, 2], [good_row, bad_row])
    assert result[0] == b"\x07" * 32 and result[1] != b"\x07" * 32
    with pytest.raises(ConfigError):
        shamir.combine_many([1, 2], [[shares[1]]])
    with pytest.raises(ConfigError):
        shamir.combine_many([1, 1], [good_row])
    with pytest.raises(ConfigError):
        shamir.split_many([bytes(32)], 0, [1], det_random(0))
    assert shamir.combine_many([1, 2], []) == []
