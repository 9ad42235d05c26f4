"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

Theory of operation: a secret s (a 32-byte string read as an integer below 2^256) is the
constant term of a random polynomial f of degree t − 1 over GF(p), p = 2^256 + 297 (the
smallest prime above 2^256, so every 32-byte secret is a field element and no secret is
split into pieces). Holder i receives (i, f(i)) for a distinct non-zero x = i. Any t shares
determine f and so s = f(0) by Lagrange interpolation; any t − 1 shares are consistent with
*every* secret (perfect secrecy), provided the coefficients are uniform — they are drawn by
rejection sampling from the injected random-byte source, never reduced with bias.

Vectorised: ``split_many`` shares many secrets among one holder set as one matrix product
(the holders' Vandermonde rows, computed once, times every secret's coefficient column,
reduced mod p once per share); ``combine_many`` rebuilds many secrets whose shares sit at
the same x coordinates as one product with the Lagrange weights at 0, which
``lagrange_at_zero`` computes once per x set (one field inversion, Montgomery's trick) and
callers keep, so recovering every secret of a survivor set costs t multiplications each. The
products run on Python's integers: numpy has no 257-bit type, and its object arrays cost
more per call than the t-term sums they would replace (measured: they made recovery
slower). ``split`` and ``combine`` are the one-secret forms.

Shares travel as 33-byte big-endian field elements; the x coordinate is implied by the
holder's position in the cohort. Own implementation rather than pycryptodome's because
pycryptodome's works over GF(2^128) with 16-byte secrets, which would force splitting our
32-byte keys; this module is short and tested over every threshold subset for small n.

Raises ``ConfigError`` for an impossible (t, n) or x, ``DataError`` for a malformed share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from operator import mul
from typing import Final

from p2pfed.errors import ConfigError, DataError
from p2pfed.secagg.primitives import RandomBytes

PRIME: Final = 2**256 + 297
SECRET_BYTES: Final = 32
SHARE_BYTES: Final = 33
MAX_SHARES: Final = 65535


def _random_element(random_bytes: RandomBytes) -> int:
    # 257-bit candidates, rejected when ≥ p: p is barely above 2^256, so about half pass.
    while True:
        candidate = int.from_bytes(random_bytes(SHARE_BYTES), "big") & ((1 << 257) - 1)
        if candidate < PRIME:
            return candidate


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ConfigError("share x coordinates must be distinct")
    if any(not 0 < x <= MAX_SHARES for x in xs):
        raise ConfigError(f"share x coordinates must lie in 1..{MAX_SHARES}")


def split_many(
    secrets: Sequence[bytes], threshold: int, xs: Sequence[int], random_bytes: RandomBytes
) -> list[dict[int, bytes]]:
    """Shares of every secret for holders at ``xs`` (one x → share map per secret).

    Coefficients are drawn secret by secret in order, so with the same random source the
    shares equal ``split`` called once per secret.
    """
    for secret in secrets:
        if len(secret) != SECRET_BYTES:
            raise ConfigError(f"a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise ConfigError(f"threshold {threshold} is impossible with {len(xs)} holders")
    if not secrets:
        return []
    columns = [
        [int.from_bytes(s, "big")] + [_random_element(random_bytes) for _ in range(threshold - 1)]
        for s in secrets
    ]
    vandermonde = [[pow(x, j, PRIME) for j in range(threshold)] for x in xs]
    return [
        {
            x: (sum(map(mul, row, column)) % PRIME).to_bytes(SHARE_BYTES, "big")
            for x, row in zip(xs, vandermonde, strict=True)
        }
        for column in columns
    ]


def split(
    secret: bytes, threshold: int, xs: Sequence[int], random_bytes: RandomBytes
) -> dict[int, bytes]:
    """Shares of ``secret`` for holders at ``xs``; any ``threshold`` of them rebuild it."""
    return split_many([secret], threshold, xs, random_bytes)[0]


def share_value(share: bytes) -> int:
    """The field element of an encoded share; ``DataError`` if it is not one."""
    if len(share) != SHARE_BYTES:
        raise DataError(f"a share must be {SHARE_BYTES} bytes, got {len(share)}")
    y = int.from_bytes(share, "big")
    if y >= PRIME:
        raise DataError("a share is not an element of the field")
    return y


def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The weights λ_i with f(0) = Σ λ_i f(x_i) for any polynomial of degree < len(xs).

    λ_i = Π_{j≠i} x_j / (x_j − x_i); all denominators are inverted with one ``pow`` (batch
    inversion). Callers keep them per x tuple (``Recovery`` does, per survivor set): every
    secret whose shares come from the same holders reuses them. Not memoised here, so
    peers simulated in one process do not share work a real peer would do alone.
    """
    if not xs:
        raise ConfigError("combining needs at least one share")
    _check_xs(xs)
    # x ≤ 65535 and t is small: the products are exact integers of a few hundred bits at
    # most, formed by math.prod in C and reduced once, not mod p after every factor.
    every = prod(xs)
    numerators = [every // xi for xi in xs]
    denominators = [prod([xj - xi for xj in xs if xj != xi]) % PRIME for xi in xs]
    prefix = [1]
    for d in denominators:
        prefix.append(prefix[-1] * d % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    weights = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        weights[i] = numerators[i] * inverse * prefix[i] % PRIME  # 1/d_i
        inverse = inverse * denominators[i] % PRIME
    return tuple(weights)


def combine_many(
    xs: Sequence[int], rows: Sequence[Sequence[bytes]], weights: Sequence[int] | None = None
) -> list[bytes | None]:
    """The secret of each row of shares at ``xs``; None where the row rebuilds none.

    Every row must use all of ``xs`` (give exactly the threshold number: more is fine only
    if they lie on one polynomial). None marks a row with a share that is not a field
    element or shares that do not rebuild a 32-byte secret (inconsistent shares).
    ``ConfigError`` for bad ``xs`` or a row's length. ``weights``: ``lagrange_at_zero(xs)``
    if the caller kept them.
    """
    if weights is None or len(weights) != len(xs):
        weights = lagrange_at_zero(tuple(xs))
    out: list[bytes | None] = []
    for row in rows:
        if len(row) != len(weights):
            raise ConfigError("every row of shares must have one share per x coordinate")
        values = [int.from_bytes(y, "big") for y in row]
        if any(len(y) != SHARE_BYTES for y in row) or any(v >= PRIME for v in values):
            out.append(None)
            continue
        secret = sum(map(mul, weights, values)) % PRIME
        out.append(None if secret >> (8 * SECRET_BYTES) else secret.to_bytes(SECRET_BYTES, "big"))
    return out


def combine(shares: Mapping[int, bytes]) -> bytes:
    """The secret interpolated at 0 from ``shares`` (x → y); uses all shares given.

    Give exactly the threshold number of shares: more is fine only if they lie on one
    polynomial. ``DataError`` when the result is not a 32-byte secret (inconsistent shares).
    """
    if not shares:
        raise ConfigError("combining needs at least one share")
    for share in shares.values():
        share_value(share)  # names a malformed share
    xs = list(shares)
    secret = combine_many(xs, [[shares[x] for x in xs]])[0]
    if secret is None:
        raise DataError("the shares do not lie on one polynomial of a 32-byte secret")
    return secret
