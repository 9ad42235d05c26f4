import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError, DataError
from p2pfed.secagg import shamir


def det_random(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def is_probable_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(0)
    for a in [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] + [
        rng.randrange(2, n - 1) for _ in range(20)
    ]:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def rebuilds(shares, secret) -> bool:
    try:
        return shamir.combine(shares) == secret
    except DataError:  # a value ≥ 2^256 is reported as inconsistent shares
        return False


def test_field_is_prime_and_holds_every_32_byte_secret():
    assert is_probable_prime(shamir.PRIME)
    assert shamir.PRIME > 2**256
    assert not any(is_probable_prime(2**256 + c) for c in range(1, 297))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_every_threshold_subset_rebuilds_and_every_smaller_one_does_not(n):
    rb = det_random(n)
    secret = bytes(range(32))
    xs = list(range(1, n + 1))
    for t in range(1, n + 1):
        shares = shamir.split(secret, t, xs, rb)
        for size in range(1, n + 1):
            for subset in itertools.combinations(xs, size):
                picked = {x: shares[x] for x in subset}
                if size >= t:
                    assert shamir.combine(picked) == secret
                else:
                    # Fewer than t shares interpolate another polynomial.
                    assert not rebuilds(picked, secret)


def test_fewer_than_t_shares_are_consistent_with_any_secret():
    # Perfect secrecy, checked constructively: for t-1 shares and ANY candidate secret
    # there is a degree-(t-1) polynomial through both, so the shares rule nothing out.
    t, xs = 3, [1, 2, 3, 4]
    shares = shamir.split(bytes(32), t, xs, det_random(1))
    coalition = {1: shares[1], 4: shares[4]}
    for candidate in (bytes(32), b"\x01" * 32, b"\xff" * 32):
        points = {x: shamir.share_value(y) for x, y in coalition.items()}
        points[0] = int.from_bytes(candidate, "big")

        def poly_at(z: int, points: dict[int, int] = points) -> int:  # Lagrange
            total = 0
            for xi, yi in points.items():
                num = den = 1
                for xj in points:
                    if xj != xi:
                        num = num * (z - xj) % shamir.PRIME
                        den = den * (xi - xj) % shamir.PRIME
                total = (total + yi * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
            return total

        fake_third = poly_at(2).to_bytes(33, "big")
        assert shamir.combine({**coalition, 2: fake_third}) == candidate


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.integers(2, 9),
    st.data(),
)
def test_round_trip_for_random_secrets_and_holders(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 4096), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, xs, det_random(n))
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=t, unique=True))
    assert shamir.combine({x: shares[x] for x in subset}) == secret


def test_a_tampered_share_changes_or_breaks_the_secret():
    shares = shamir.split(b"\x07" * 32, 2, [1, 2, 3], det_random(3))
    bad = (shamir.share_value(shares[2]) ^ 1).to_bytes(33, "big")
    assert not rebuilds({1: shares[1], 2: bad}, b"\x07" * 32)


def test_bad_parameters():
    rb = det_random(0)
    with pytest.raises(ConfigError):
        shamir.split(bytes(31), 1, [1], rb)
    with pytest.raises(ConfigError):
        shamir.split(bytes(32), 3, [1, 2], rb)
    with pytest.raises(ConfigError):
        shamir.split(bytes(32), 1, [1, 1], rb)
    with pytest.raises(ConfigError):
        shamir.split(bytes(32), 1, [0], rb)
    with pytest.raises(DataError):
        shamir.combine({1: bytes(32)})
    with pytest.raises(DataError):
        shamir.combine({1: b"\xff" * 33})
    with pytest.raises(ConfigError):
        shamir.combine({})
