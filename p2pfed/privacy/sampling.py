"""Noise from a cryptographic source: an exact discrete Gaussian and a hardened float Gaussian.

Theory of operation. Every random bit comes from ``ChaChaSource``: the ChaCha20 keystream
(``cryptography``) under a 32-byte key from ``os.urandom``, read as little-endian 64-bit
words. numpy's PCG64 is fast but predictable from its output, so it never draws noise that
protects a released value; ``ChaChaSource.from_seed`` exists for reproducible tests only.

``discrete_gaussian(σ², n, source)`` is the sampler of Canonne, Kamath & Steinke (2020,
Algorithms 1–3): a discrete Laplace candidate of integer scale t = ⌊σ⌋ + 1, kept with
probability exp(−(|Y| − σ²/t)² / 2σ²). Every coin is a Bernoulli(exp(−γ)) decided by
comparing a uniform U (64 CSPRNG bits, extended on demand) with exp(−γ): the vectorised fast
path decides all U farther than 2⁻⁴⁰ from a float64 exp(−γ) (whose error is below 2⁻⁵⁰),
and the rare rest (≈ 2⁻³⁹ of coins) is decided exactly with γ as a ``Fraction``, exp(−γ) in
``decimal`` at growing precision and U extended 64 bits at a time. So each coin is exactly
Bernoulli(exp(−γ)), with no floating-point artefact in the output distribution, while
10⁶ coordinates cost about a second (numpy passes over CSPRNG words; see docs/privacy.md).

``SecureGaussian`` replaces numpy's generator for float Gaussian noise (local mode):
Box–Muller over 53-bit CSPRNG uniforms, averaged as in Opacus ``secure_mode`` (the sum of
four draws halved, after Holohan & Braghin 2021) to blur the float lattice of a single draw.
"""

from __future__ import annotations

import decimal
import hashlib
import math
import os
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from p2pfed.errors import ConfigError

_KEY_BYTES = 32
_MARGIN = 2.0**-40  # fast-path coins closer than this to exp(−γ) are decided exactly
_TWO64 = 1 << 64
_PLAINTEXT = memoryview(bytes(1 << 20))  # zeros, encrypted a MiB at a time into the keystream


class BitSource(Protocol):
    """Uniform 64-bit words: where every random decision of a sampler comes from."""

    def uint64(self, n: int) -> NDArray[np.uint64]:
        """``n`` independent uniform words."""
        ...


class ChaChaSource:
    """The ChaCha20 keystream as uniform 64-bit words; keyed by ``os.urandom`` by default."""

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(_KEY_BYTES) if key is None else key
        if len(key) != _KEY_BYTES:
            raise ConfigError(f"a ChaCha20 noise key must be 32 bytes, got {len(key)}")
        # 16-byte nonce field: 4-byte block counter then 12-byte nonce, both zero (one key,
        # one stream; 2^32 blocks = 256 GiB before the counter would wrap).
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    @classmethod
    def from_seed(cls, seed: int) -> ChaChaSource:
        """A reproducible stream for tests and the simulator; never for released noise."""
        return cls(hashlib.sha256(b"p2pfed test noise seed " + str(seed).encode()).digest())

    def uint64(self, n: int) -> NDArray[np.uint64]:
        """``n`` words of keystream (the encryption of zeros), in a fresh array."""
        return self.uint64_into(np.empty(n + 8, np.uint64), n)

    def uint64_into(self, out: NDArray[np.uint64], n: int) -> NDArray[np.uint64]:
        """The next ``n`` words of keystream, written into ``out[:n]`` (and returned).

        The keystream goes straight into ``out``: no zeros, ciphertext or converted copy
        allocated per call (a third of the time those took). ``out`` (contiguous) needs 8
        words more than ``n``: cryptography asks for room for a block beyond the data, even
        for a stream cipher.
        """
        if not out.flags.c_contiguous or out.size < n + 8:
            raise ValueError(f"uint64_into needs a contiguous buffer of {n + 8} words or more")
        raw, need = out.view(np.uint8).data, 8 * n
        for start in range(0, need, len(_PLAINTEXT)):
            chunk = _PLAINTEXT[: min(len(_PLAINTEXT), need - start)]
            self._stream.update_into(chunk, raw[start:])
        words = out[:n]
        if sys.byteorder != "little":
            words.byteswap(inplace=True)
        return words


def uniform_below(bound: int, n: int, source: BitSource) -> NDArray[np.int64]:
    """``n`` uniform integers in {0, …, bound − 1}, unbiased (rejection of the top words)."""
    if not 1 <= bound < (1 << 62):
        raise ConfigError(f"a uniform bound must lie in 1..2^62, got {bound}")
    limit = (_TWO64 // bound) * bound  # words below it map onto the range evenly
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        words = source.uint64(n - filled)
        if limit < _TWO64:
            words = words[words < np.uint64(limit)]
        take = words[: n - filled] % np.uint64(bound)
        out[filled : filled + take.size] = take.astype(np.int64)
        filled += take.size
    return out


def _exact_coin(gamma: Fraction, first: int, source: BitSource) -> bool:
    """Decide U < exp(−γ) exactly, U's first 64 bits being ``first``; more bits on demand."""
    if gamma == 0:
        return True
    known, bits, prec = first, 64, 60
    while True:
        with decimal.localcontext() as ctx:
            ctx.prec = prec
            p = (-(decimal.Decimal(gamma.numerator) / decimal.Decimal(gamma.denominator))).exp()
            slack = p * decimal.Decimal(10) ** (10 - prec)  # rounding of the division and exp
            scale = decimal.Decimal(2) ** bits
            low, high = decimal.Decimal(known) / scale, decimal.Decimal(known + 1) / scale
            if high <= p - slack:
                return True
            if low >= p + slack:
                return False
        known = (known << 64) | int(source.uint64(1)[0])
        bits, prec = bits + 64, prec + 40


def bernoulli_exp(
    gamma: NDArray[np.float64],
    exact_gamma: Callable[[int], Fraction],
    source: BitSource,
) -> NDArray[np.bool_]:
    """Coins that are 1 with probability exp(−γ_i), exactly.

    ``gamma`` is the float value of each γ_i ≥ 0 (for the fast path) and ``exact_gamma(i)``
    its exact ``Fraction`` (asked only for the rare coins the fast path cannot decide).
    """
    p = np.exp(-gamma)
    u = source.uint64(gamma.size)
    uf = u.astype(np.float64) * 2.0**-64
    out = uf < p
    unsure = np.flatnonzero(np.abs(uf - p) <= _MARGIN)
    for i in unsure:
        out[i] = _exact_coin(exact_gamma(int(i)), int(u[i]), source)
    return out


def _one(_index: int) -> Fraction:
    return Fraction(1)


def _geometric_exp1(n: int, source: BitSource) -> NDArray[np.int64]:
    """Failures-free run lengths: how many Bernoulli(e⁻¹) coins come up 1 before the first 0."""
    count = np.zeros(n, dtype=np.int64)
    alive = np.arange(n)
    ones = np.ones(n, dtype=np.float64)
    while alive.size:
        heads = bernoulli_exp(ones[: alive.size], _one, source)
        alive = alive[heads]
        count[alive] += 1
    return count


def discrete_laplace(t: int, n: int, source: BitSource) -> NDArray[np.int64]:
    """``n`` draws with P(y) ∝ exp(−|y|/t) on the integers (CKS 2020, Algorithm 2, s = 1)."""
    if t < 1:
        raise ConfigError(f"the discrete Laplace scale must be a positive integer, got {t}")
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        k = todo.size
        u = uniform_below(t, k, source)

        def exact(i: int, u: NDArray[np.int64] = u) -> Fraction:
            return Fraction(int(u[i]), t)

        keep = bernoulli_exp(u / t, exact, source)
        v = _geometric_exp1(k, source)
        x = u + t * v
        negative = (source.uint64(k) & np.uint64(1)).astype(bool)
        keep &= ~(negative & (x == 0))  # −0 would count zero twice
        done = todo[keep]
        out[done] = np.where(negative[keep], -x[keep], x[keep])
        todo = todo[~keep]
    return out


def as_fraction(variance: float | Fraction) -> Fraction:
    """σ² as an exact rational (a float converts exactly); refuses non-positive values."""
    if (isinstance(variance, float) and not math.isfinite(variance)) or not variance > 0:
        raise ConfigError(f"a discrete Gaussian variance must be positive, got {variance}")
    return Fraction(variance)


def discrete_gaussian(variance: float | Fraction, n: int, source: BitSource) -> NDArray[np.int64]:
    """``n`` exact draws from N_Z(0, σ²): P(y) ∝ exp(−y²/2σ²) on the integers (CKS Alg. 3)."""
    s2 = as_fraction(variance)
    t = math.isqrt(s2.numerator * s2.denominator) // s2.denominator + 1  # ⌊σ⌋ + 1, exactly
    shift, s2f = s2 / t, float(s2)
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        y = discrete_laplace(t, todo.size, source)
        diff = np.abs(y).astype(np.float64) - float(shift)
        gamma = diff * diff / (2.0 * s2f)

        def exact(i: int, y: NDArray[np.int64] = y) -> Fraction:
            return (abs(int(y[i])) - shift) ** 2 / (2 * s2)

        keep = bernoulli_exp(gamma, exact, source)
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


class SecureGaussian:
    """Float Gaussian noise from the CSPRNG, with numpy ``Generator.normal``'s call shape.

    Each value is (z₁ + z₂ + z₃ + z₄)/2 of four standard normals from four different
    Box–Muller pairs (a pair's two outputs share its radius: summed, they would be one
    draw scaled by √2). Values are made ``CHUNK`` at a time, every pass in place over
    cache-sized arrays, the keystream written straight into a reused buffer when the source
    can (``ChaChaSource.uint64_into``); memory stays a few hundred kB beyond the output.
    """

    CHUNK = 1 << 14

    def __init__(self, source: BitSource | None = None) -> None:
        self.source: BitSource = source if source is not None else ChaChaSource()
        self._words = np.empty(0, np.uint64)

    def _uniform(self, n: int, out: NDArray[np.float64]) -> NDArray[np.float64]:
        """Uniforms in (0, 1] into ``out[:n]``: 53 random bits, never 0 (log(0) is −inf)."""
        if self._words.size < n + 8:
            self._words = np.empty(n + 8, np.uint64)
        if isinstance(self.source, ChaChaSource):
            words = self.source.uint64_into(self._words, n)
        else:
            words = self._words[:n]
            words[:] = self.source.uint64(n)
        words >>= np.uint64(11)
        words += np.uint64(1)
        return np.multiply(words, 2.0**-53, out=out[:n])

    def _sum_of_four(self, out: Any, u: NDArray[np.float64], xp: Any, wrap: Any) -> None:
        """``out[j]`` = the sum of four standard normals, one from each of four pairs (m ≥ 2).

        ``xp`` is the array module doing the float64 maths on ``out`` (numpy, or torch from a
        caller that has it: its vectorised log, cos and sin are 2–3× numpy's); ``wrap`` turns
        the numpy uniforms into its arrays without a copy.
        """
        m = len(out)
        uniforms = wrap(self._uniform(4 * m, u))
        r, theta = uniforms[: 2 * m], uniforms[2 * m :]
        xp.log(r, out=r)
        r *= -2.0
        xp.sqrt(r, out=r)
        theta *= 2.0 * math.pi
        cos = xp.cos(theta)
        xp.sin(theta, out=theta)
        cos *= r  # pairs 0..2m−1: cos[k] and sin[k] share r[k]
        theta *= r
        xp.add(cos[:m], cos[m:], out=out)  # pairs j and m + j
        out += xp.roll(theta[:m], 1)  # pair j − 1 (mod m): for m ≥ 2 never j or m + j
        out += xp.roll(theta[m:], 1)  # pair m + j − 1 (mod m)

    def standard_into(self, out: Any, xp: Any = np, wrap: Any = None) -> None:
        """Fill the 1-D float64 array ``out`` (of module ``xp``) with 2·N(0, 1) per entry.

        Twice a standard normal, the four draws' plain sum: callers scale by σ/2 in one pass.
        """
        wrap = (lambda a: a) if wrap is None else wrap
        n = len(out)
        scratch = np.empty(4 * max(2, min(n, self.CHUNK)), dtype=np.float64)
        for start in range(0, n, self.CHUNK):
            part = out[start : start + self.CHUNK]
            if len(part) == 1:  # four distinct pairs need two values' worth: keep one
                two = np.empty(2)
                self._sum_of_four(two, scratch, np, lambda a: a)
                part[0] = float(two[0])
            else:
                self._sum_of_four(part, scratch, xp, wrap)

    def normal(self, loc: float, scale: float, size: Any) -> NDArray[np.float64]:
        """N(loc, scale²) per entry of an array of shape ``size``."""
        shape = tuple(np.atleast_1d(np.asarray(size, dtype=np.int64)).tolist())
        out = np.empty(math.prod(shape), dtype=np.float64)
        self.standard_into(out)
        out *= 0.5 * scale
        out += loc
        return out.reshape(shape)
