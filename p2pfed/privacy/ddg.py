"""The distributed discrete Gaussian in Z_2^k (Kairouz, Liu & Steinke 2021), against insiders.

Theory of operation. A peer's clipped update x (L2 ≤ S) is divided by the granularity γ,
rounded coordinate-wise to a neighbouring integer at random (up with probability equal to
the fractional part) and the rounding is redrawn until the integer vector's L2 norm is at
most the conditional-rounding bound

    Δ₂² = min{ (S/γ)² + d/4 + √(2 ln(1/β))·(S/γ + √d/2),  (S/γ + √d)² },

then the peer adds integer noise N_Z(0, σ_i²) per coordinate and reduces mod 2^k. Secure
aggregation sums the words mod 2^k; the sum is read as its centred representative in
[−2^(k−1), 2^(k−1)) and multiplied by γ. Nothing is ever clipped coordinate-wise, so the
noise reaches the sum whole; ``plan_ddg`` picks γ and k so that the sum of n peers stays
inside the centred range except with probability ``WRAP_BOUND`` (a union bound over the d
coordinates of the sub-Gaussian noise tail plus the worst-case signal nΔ₂).

*Insider calibration.* A completed sum holds at least m inputs (the secure round aborts
below ``min_contributors``). A coalition of c members knows its own noise, so what protects
anyone else is the noise of the other m − c. Each peer therefore adds σ_i² = ⌈z²Δ₂²/(m−c)⌉,
so that those m − c shares alone give the planned total z·Δ₂ (z the noise multiplier).

*Accounting* (Kairouz et al. 2021, Theorem 1): the sum of p independent N_Z(0, σ_i²) added
to an integer vector of L2 sensitivity Δ₂ in d dimensions is ½ε²-zCDP with

    ε² = Δ₂² / (p σ_i²) + ½ τ d,    τ = 10 Σ_{k=1}^{p−1} exp(−2π² σ_i² k/(k+1)),

τ bounding how far a sum of discrete Gaussians is from one discrete Gaussian (the theorem
needs σ_i ≥ 1/2; the ceiling makes every planned σ_i² ≥ 1). Against
outsiders p = m; against c insiders p = m − c (the figure the ledger records). zCDP ρ is
the RDP curve α·ρ, exactly the curve of a Gaussian of noise multiplier 1/√(2ρ), which is what
a release records; with τ = 0 that is z itself against insiders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy import validate
from p2pfed.privacy.rdp import DEFAULT_ORDERS, epsilon_from_rdp
from p2pfed.privacy.sampling import BitSource, ChaChaSource, discrete_gaussian
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.secagg.primitives import UIntVector, ring_dtype

#: Probability bound for the n-peer sum to leave the ring's centred range in one round.
WRAP_BOUND = 2.0**-40
#: The paper's β: a bound on the probability that one rounding attempt is rejected.
ROUNDING_BETA = math.exp(-0.5)
#: Finest grid used: S/γ at most this many units per √d (keeps σ_i within int64 comfort).
MAX_SCALE_PER_ROOT_D = 2.0**12
#: Coarsest grid accepted: S/γ at least this many units per √d (rounding inflates Δ₂ ≤ 1 %).
MIN_SCALE_PER_ROOT_D = 50.0
_MAX_ROUNDING_TRIES = 1000
CHUNK = 1 << 18
"""Coordinates encoded at a time: the sampler's temporaries are ~14 × 8 bytes per coordinate."""


def rounding_bound(scale: float, dimension: int, beta: float = ROUNDING_BETA) -> float:
    """Δ₂ for conditional randomised rounding of a vector of norm ≤ ``scale`` (= S/γ)."""
    d = float(dimension)
    a = scale**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (scale + math.sqrt(d) / 2)
    return math.sqrt(min(a, (scale + math.sqrt(d)) ** 2))


def tau(variance: float, peers: int) -> float:
    """τ of Theorem 1 for a sum of ``peers`` discrete Gaussians of variance ``variance``."""
    return 10.0 * sum(math.exp(-2 * math.pi**2 * variance * k / (k + 1)) for k in range(1, peers))


def ddg_rho(sensitivity: float, variance: float, peers: int, dimension: int) -> float:
    """The zCDP ρ = ε²/2 of the sum of ``peers`` N_Z(0, variance) shares (Theorem 1, L2 form)."""
    if peers < 1:
        raise ConfigError(f"a distributed noise sum needs at least one share, got {peers}")
    eps2 = sensitivity**2 / (peers * variance) + 0.5 * tau(variance, peers) * dimension
    return eps2 / 2


def zcdp_epsilon(rho: float, delta: float, rounds: int = 1) -> float:
    """(ε, δ) of ``rounds`` compositions of a ρ-zCDP release (RDP α·ρ, Balle et al. Thm 21)."""
    curve = [a * rho * rounds for a in DEFAULT_ORDERS]
    return epsilon_from_rdp(DEFAULT_ORDERS, curve, validate.delta(delta))[0]


def noise_multiplier_of(rho: float) -> float:
    """The Gaussian noise multiplier with the same RDP curve as a ρ-zCDP release."""
    return 1.0 / math.sqrt(2.0 * rho)


@dataclass(frozen=True, slots=True)
class DDGPlan:
    """Ring, grid and noise of one consortium's distributed discrete Gaussian."""

    n_peers: int
    min_contributors: int
    collusion: int
    dimension: int
    clip_norm: float
    noise_multiplier: float
    scale: float
    """S/γ: the clip norm in integer units."""
    ring_bits: int

    @property
    def gamma(self) -> float:
        """Granularity: one integer unit in update units."""
        return self.clip_norm / self.scale

    @property
    def sensitivity(self) -> float:
        """Δ₂, the L2 bound of a rounded update in integer units."""
        return rounding_bound(self.scale, self.dimension)

    @property
    def local_variance(self) -> Fraction:
        """σ_i² = ⌈z²Δ₂²/(m − c)⌉: each peer's noise variance in integer units."""
        z, delta2 = self.noise_multiplier, self.sensitivity
        others = self.min_contributors - self.collusion
        return Fraction(math.ceil(z * z * delta2 * delta2 / others))

    def rho(self, against_insiders: bool = True, contributors: int | None = None) -> float:
        """The zCDP ρ of one round with ``contributors`` inputs (default m) seen by the observer."""
        k = self.min_contributors if contributors is None else contributors
        p = k - self.collusion if against_insiders else k
        return ddg_rho(self.sensitivity, float(self.local_variance), p, self.dimension)

    def release_noise_multiplier(self) -> float:
        """What the ledger records per round: the worst case, m inputs and c insiders."""
        return noise_multiplier_of(self.rho(against_insiders=True))

    def epsilon(self, delta: float, rounds: int, against_insiders: bool = True) -> float:
        """ε after ``rounds`` rounds at δ, with the minimum m inputs in every sum."""
        return zcdp_epsilon(self.rho(against_insiders), delta, rounds)


def plan_ddg(
    *,
    n_peers: int,
    min_contributors: int,
    collusion: int,
    dimension: int,
    clip_norm: float,
    noise_multiplier: float,
) -> DDGPlan:
    """Choose the ring size and grid so the n-peer sum never wraps w.o.p.; ``ConfigError`` if none.

    The grid is as fine as the ring allows, up to ``MAX_SCALE_PER_ROOT_D``·√d units per S,
    and at least ``MIN_SCALE_PER_ROOT_D``·√d (coarser would inflate the sensitivity, and so
    the noise, by more than about 1 %). A 32-bit ring is used when it fits, else 64 bits.
    """
    n = validate.count("number of peers", n_peers)
    m = validate.count("minimum contributors", min_contributors)
    c = validate.count("collusion bound", collusion, minimum=0)  # 0: outsiders only
    d = validate.count("dimension", dimension)
    s = validate.clip_norm(clip_norm)
    z = validate.noise_multiplier(noise_multiplier)
    if m > n:
        raise ConfigError(f"minimum contributors ({m}) exceeds the number of peers ({n})")
    if c >= m:
        raise ConfigError(
            f"collusion bound c = {c} must be below the minimum contributors m = {m}: "
            "a coalition of c would hold all the noise of a sum"
        )
    tail = math.sqrt(2 * math.log(2 * d / WRAP_BOUND))
    # Per coordinate, |sum| ≤ n·Δ₂ (signal) + tail·√n·σ_i (noise), σ_i = zΔ₂/√(m−c)
    # (the +1 of the ceiling on σ_i² is covered by using Δ₂ + 1).
    per_delta = n + tail * math.sqrt(n) * z / math.sqrt(m - c)
    root_d = math.sqrt(d)
    for bits in (32, 64):
        half = float(1 << (bits - 1)) * (1 - 1e-9)
        largest_delta = half / per_delta - 1
        scale = min(MAX_SCALE_PER_ROOT_D * root_d, largest_delta - root_d)
        if scale >= MIN_SCALE_PER_ROOT_D * root_d:
            return DDGPlan(n, m, c, d, s, z, scale, bits)
    raise ConfigError(
        f"a 64-bit ring cannot hold the sum of {n} peers of dimension {d} at noise "
        f"multiplier {z:g} without risking a wrap; use fewer peers or a smaller model"
    )


class DiscreteGaussianEncoder:
    """Round, noise and wrap one update into Z_2^k; decode a ring sum (``FixedPoint``'s shape)."""

    def __init__(self, plan: DDGPlan, source: BitSource | None = None) -> None:
        self.plan = plan
        self.source: BitSource = source if source is not None else ChaChaSource()
        self.ring_bits = plan.ring_bits

    def check_peers(self, n: int) -> None:
        """``ConfigError`` unless ``n`` peers is within the plan."""
        if not 1 <= n <= self.plan.n_peers:
            raise ConfigError(
                f"the discrete Gaussian plan covers 1..{self.plan.n_peers} peers, got {n}"
            )

    def _checked(self, values: NDArray[np.floating], chunk: int) -> NDArray[np.floating]:
        """``values`` as a vector of the plan's dimension, finite and within the clip norm."""
        array = np.asarray(values)
        if array.ndim != 1 or array.size != self.plan.dimension:
            raise DataError(
                f"an update must be a vector of {self.plan.dimension} values, got {array.shape}"
            )
        squares = 0.0
        for lo in range(0, array.size, chunk):
            part = array[lo : lo + chunk].astype(np.float64)
            if not np.isfinite(part).all():
                raise DataError("an update contains NaN or infinite values")
            squares += float(np.dot(part, part))
        if math.sqrt(squares) > self.plan.clip_norm * (1 + 1e-9):
            raise DataError(
                f"an update of norm {math.sqrt(squares):.6g} exceeds the clip norm "
                f"{self.plan.clip_norm:g}; clip before encoding"
            )
        return array

    def _rounded_words(self, values: NDArray[np.floating], chunk: int) -> UIntVector:
        """Conditional randomised rounding of values/γ, stored as ring words, ``chunk`` at a time.

        Each attempt draws the uniforms of the whole vector in order, so the result equals
        rounding it at once; the words hold the integers mod 2^k, and as the plan keeps
        every |coordinate| ≤ Δ₂ < 2^(k−1), their signed view holds them exactly.
        """
        array = self._checked(values, chunk)
        words = np.empty(array.size, dtype=ring_dtype(self.ring_bits))
        bound, gamma = self.plan.sensitivity, self.plan.gamma
        for _ in range(_MAX_ROUNDING_TRIES):
            squares = 0.0
            for lo in range(0, array.size, chunk):
                scaled = array[lo : lo + chunk].astype(np.float64)  # a copy: worked in place
                scaled /= gamma
                rounded = np.floor(scaled)
                scaled -= rounded  # the fractional part
                u = self.source.uint64(scaled.size) >> np.uint64(11)
                rounded += u.astype(np.float64) * 2.0**-53 < scaled
                squares += float(np.dot(rounded, rounded))
                words[lo : lo + chunk] = self.wrap(rounded.astype(np.int64))
            if math.sqrt(squares) <= bound:
                return cast(UIntVector, words)
        raise DataError(f"randomised rounding exceeded Δ₂ = {bound:.6g} in every attempt")

    def _signed(self, words: UIntVector) -> NDArray[np.signedinteger[Any]]:
        """The words read as two's-complement integers of the ring's width (no copy)."""
        return words.view(np.int32 if self.ring_bits == 32 else np.int64)

    def round(self, values: NDArray[np.floating], *, chunk: int = CHUNK) -> NDArray[np.int64]:
        """Conditional randomised rounding of values/γ to an integer vector of norm ≤ Δ₂."""
        return self._signed(self._rounded_words(values, chunk)).astype(np.int64)

    def noise(self, size: int) -> NDArray[np.int64]:
        """This peer's integer noise N_Z(0, σ_i²) per coordinate."""
        return discrete_gaussian(self.plan.local_variance, size, self.source)

    def wrap(self, integers: NDArray[np.int64]) -> UIntVector:
        """Integers reduced mod 2^k as ring words."""
        words = integers.astype(np.int64).view(np.uint64)
        return cast(UIntVector, words.astype(ring_dtype(self.ring_bits)))

    def _add_noise(self, words: UIntVector, lo: int, hi: int) -> NDArray[np.int64]:
        """Add fresh noise to the rounded words[lo:hi] in the ring; the noise drawn."""
        rounded = self._signed(words)[lo:hi].astype(np.int64)
        noise = self.noise(rounded.size)
        words[lo:hi] = self.wrap(rounded + noise)
        return noise

    def encode_parts(
        self, values: NDArray[np.floating], *, chunk: int = CHUNK
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], UIntVector]:
        """(rounded signal, noise, words): the words are their sum mod 2^k, nothing clipped."""
        words = self._rounded_words(values, chunk)
        rounded = self._signed(words).astype(np.int64)
        noise = [self._add_noise(words, lo, lo + chunk) for lo in range(0, words.size, chunk)]
        return rounded, np.concatenate(noise), words

    def encode(
        self, values: NDArray[np.floating], rng: Any, peers: int, *, chunk: int = CHUNK
    ) -> UIntVector:
        """Words for the secure sum: round(values/γ) + noise mod 2^k. ``rng`` is unused.

        ``chunk`` coordinates at a time: the temporaries are a few chunks in size instead of
        about ten float64/int64 copies of the update; the noise of each chunk is drawn after
        the whole vector is rounded, so the words equal ``encode_parts``' for the same stream.
        """
        self.check_peers(peers)
        words = self._rounded_words(values, chunk)
        for lo in range(0, words.size, chunk):
            self._add_noise(words, lo, lo + chunk)
        return words

    def centred(self, total: UIntVector) -> NDArray[np.int64]:
        """The ring sum read as its representative in [−2^(k−1), 2^(k−1))."""
        words = np.asarray(total, dtype=ring_dtype(self.ring_bits))
        return self._signed(cast(UIntVector, words)).astype(np.int64)

    def decode_sum(self, total: UIntVector, peers: int) -> NDArray[np.float64]:
        """The float sum (noise included) of ``peers`` encoded updates from their ring sum."""
        self.check_peers(peers)
        return self.centred(total).astype(np.float64) * self.plan.gamma


def secure_ring_encoder(
    fixed_point: FixedPoint,
    *,
    distributed: bool,
    collusion: int,
    threshold: int,
    n_peers: int,
    min_contributors: int,
    dimension: int,
    clip_norm: float,
    noise_multiplier: float,
) -> tuple[FixedPoint | DiscreteGaussianEncoder, DDGPlan | None]:
    """The secure ring's encoder: the discrete Gaussian under distributed DP, else fixed point.

    ``ConfigError`` unless 1 ≤ c ≤ t − 1 and a ring fits the plan.
    """
    if not distributed:
        return fixed_point, None
    if not 1 <= collusion <= threshold - 1:
        raise ConfigError(
            f"[secagg] collusion = {collusion} must lie in 1..{threshold - 1} "
            "(the secure-aggregation threshold minus one)"
        )
    plan = plan_ddg(
        n_peers=n_peers,
        min_contributors=min_contributors,
        collusion=collusion,
        dimension=dimension,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
    )
    return DiscreteGaussianEncoder(plan), plan
