"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

Theory of operation: a secret s (a 32-byte string read as an integer below 2^256) is the
constant term of a random polynomial f of degree t − 1 over GF(p), p = 2^256 + 297 (the
smallest prime above 2^256, so every 32-byte secret is a field element and no secret is
split into pieces). Holder i receives (i, f(i)) for a distinct non-zero x = i. Any t shares
determine f and so s = f(0) by Lagrange interpolation; any t − 1 shares are consistent with
*every* secret (perfect secrecy), provided the coefficients are uniform — they are drawn by
rejection sampling from the injected random-byte source, never reduced with bias.

Shares travel as 33-byte big-endian field elements; the x coordinate is implied by the
holder's position in the cohort. Own implementation rather than pycryptodome's because
pycryptodome's works over GF(2^128) with 16-byte secrets, which would force splitting our
32-byte keys; this module is short and tested over every threshold subset for small n.

Raises ``ConfigError`` for an impossible (t, n) or x, ``DataError`` for a malformed share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def split(
    secret: bytes, threshold: int, xs: Sequence[int], random_bytes: RandomBytes
) -> dict[int, bytes]:
    """Shares of ``secret`` for holders at ``xs``; any ``threshold`` of them rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(xs)) != len(xs):
        raise ConfigError("share x coordinates must be distinct")
    if any(not 0 < x <= MAX_SHARES for x in xs):
        raise ConfigError(f"share x coordinates must lie in 1..{MAX_SHARES}")
    if not 1 <= threshold <= len(xs):
        raise ConfigError(f"threshold {threshold} is impossible with {len(xs)} holders")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_element(random_bytes) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def share_value(share: bytes) -> int:
    """The field element of an encoded share; ``DataError`` if it is not one."""
    if len(share) != SHARE_BYTES:
        raise DataError(f"a share must be {SHARE_BYTES} bytes, got {len(share)}")
    y = int.from_bytes(share, "big")
    if y >= PRIME:
        raise DataError("a share is not an element of the field")
    return y


def combine(shares: Mapping[int, bytes]) -> bytes:
    """The secret interpolated at 0 from ``shares`` (x → y); uses all shares given.

    Give exactly the threshold number of shares: more is fine only if they lie on one
    polynomial. ``DataError`` when the result is not a 32-byte secret (inconsistent shares).
    """
    if not shares:
        raise ConfigError("combining needs at least one share")
    if any(not 0 < x <= MAX_SHARES for x in shares):
        raise ConfigError(f"share x coordinates must lie in 1..{MAX_SHARES}")
    points = [(x, share_value(y)) for x, y in shares.items()]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise DataError("the shares do not lie on one polynomial of a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
