"""The CSPRNG-fed samplers: exact discrete Gaussian (CKS 2020) and hardened float Gaussian."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError
from p2pfed.privacy import sampling
from p2pfed.privacy.sampling import (
    ChaChaSource,
    SecureGaussian,
    bernoulli_exp,
    discrete_gaussian,
    discrete_laplace,
    uniform_below,
)


class ScriptedSource:
    """Words from a list first, then from a seeded ChaCha stream."""

    def __init__(self, first: list[int]) -> None:
        self.first = list(first)
        self.rest = ChaChaSource.from_seed(99)

    def uint64(self, n: int) -> np.ndarray:
        head, self.first = self.first[:n], self.first[n:]
        tail = self.rest.uint64(n - len(head))
        return np.concatenate([np.array(head, dtype=np.uint64), tail])


def test_production_sources_are_independent_and_seeded_ones_reproducible() -> None:
    assert not np.array_equal(ChaChaSource().uint64(8), ChaChaSource().uint64(8))
    assert np.array_equal(ChaChaSource.from_seed(3).uint64(8), ChaChaSource.from_seed(3).uint64(8))
    with pytest.raises(ConfigError, match="32 bytes"):
        ChaChaSource(b"short")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2**40), st.integers(0, 2**31))
def test_uniform_below_stays_in_range(bound: int, seed: int) -> None:
    out = uniform_below(bound, 64, ChaChaSource.from_seed(seed))
    assert out.min() >= 0 and out.max() < bound


@settings(max_examples=30, deadline=None)
@given(
    st.one_of(
        st.floats(0.01, 1e12),
        st.fractions(Fraction(1, 100), Fraction(10**6)).filter(lambda f: f > 0),
    ),
    st.integers(0, 2**31),
)
def test_discrete_gaussian_support_is_the_integers_with_both_signs(
    variance: float | Fraction, seed: int
) -> None:
    out = discrete_gaussian(variance, 400, ChaChaSource.from_seed(seed))
    assert out.dtype == np.int64 and out.shape == (400,)
    sigma = math.sqrt(float(variance))
    assert np.abs(out).max() <= 12 * sigma + 12  # tail beyond 12σ has probability < 1e-30
    if sigma >= 1:  # both signs appear in 400 draws (fails with probability < 2^-100)
        assert (out > 0).any() and (out < 0).any()


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 10**6), st.integers(0, 2**31))
def test_discrete_laplace_is_integer_valued(t: int, seed: int) -> None:
    out = discrete_laplace(t, 200, ChaChaSource.from_seed(seed))
    assert out.dtype == np.int64 and np.abs(out).max() < 200 * t


def test_discrete_gaussian_pmf_and_variance_match_the_distribution() -> None:
    # N_Z(0, 1): exact probabilities of 0 and ±1 from the normalising sum.
    weights = {k: math.exp(-k * k / 2) for k in range(-40, 41)}
    total = sum(weights.values())
    n = 200_000
    out = discrete_gaussian(1.0, n, ChaChaSource.from_seed(1))
    for k in (0, 1, -1, 2, -2):
        p = weights[k] / total
        # 5 standard errors of a binomial frequency: fails by chance with p < 1e-6
        assert abs(np.mean(out == k) - p) < 5 * math.sqrt(p * (1 - p) / n), k
    # Variance of N_Z(0, σ²) for σ = 10 equals σ² to 1e-40; the sample variance's standard
    # error is σ²·√(2/n), so 5 of them (1.6 %) bound a chance failure at ~1e-6.
    big = discrete_gaussian(100.0, n, ChaChaSource.from_seed(2)).astype(np.float64)
    assert abs(big.var() / 100.0 - 1) < 5 * math.sqrt(2 / n)
    assert abs(big.mean()) < 5 * 10 / math.sqrt(n)  # symmetric about 0
    assert abs(np.mean(big > 0) - np.mean(big < 0)) < 5 / math.sqrt(n)


def test_coins_close_to_the_threshold_are_decided_exactly() -> None:
    gamma = 0.75
    p_word = int(math.exp(-gamma) * 2.0**64)
    # Words within the fast path's margin of exp(−γ), both sides: decided at high precision.
    for word in (p_word - 2**20, p_word + 2**20):
        coins = bernoulli_exp(np.array([gamma]), lambda _i: Fraction(3, 4), ScriptedSource([word]))
        exact = math.exp(-gamma)  # 2^20 / 2^64 ≈ 6e-14 ≫ float error 1e-16
        assert bool(coins[0]) == (word / 2.0**64 < exact)


def test_exact_coin_refines_u_until_decided() -> None:
    # U's first word equals ⌊exp(−1)·2^64⌋: the next words must be read to decide.
    first = int(sampling.decimal.Decimal(-1).exp() * (1 << 64))
    source = ScriptedSource([])
    assert isinstance(sampling._exact_coin(Fraction(1), first, source), bool)
    assert sampling._exact_coin(Fraction(0), 2**64 - 1, source) is True


def test_secure_gaussian_has_the_requested_spread_and_differs_per_instance() -> None:
    g = SecureGaussian(ChaChaSource.from_seed(5))
    x = g.normal(0.0, 2.0, (400, 500))
    assert x.shape == (400, 500)
    assert abs(x.std() / 2.0 - 1) < 5 / math.sqrt(2 * x.size)
    assert not np.array_equal(SecureGaussian().normal(0, 1, 4), SecureGaussian().normal(0, 1, 4))
    assert isinstance(SecureGaussian().source, ChaChaSource)


class FixedWords:
    """A seeded ChaCha stream's first words, with one word replaced (not a ChaChaSource)."""

    def __init__(self, n: int, changed: int | None) -> None:
        self.words = ChaChaSource.from_seed(7).uint64(n)
        if changed is not None:
            self.words[changed] ^= np.uint64(1 << 40)

    def uint64(self, n: int) -> np.ndarray:
        out, self.words = self.words[:n], self.words[n:]
        return out


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.data())
def test_each_float_value_mixes_four_box_muller_pairs_and_each_pair_feeds_two_values(
    m: int, data: st.DataObject
) -> None:
    # Uniform k < 2m is pair k's radius: shared by its cosine and sine output. Changing it
    # must change exactly two values (each output of a pair in a different value); if a
    # pair's two outputs were summed into one value, that value would be one draw × √2.
    k = data.draw(st.integers(0, 2 * m - 1))
    base = SecureGaussian(FixedWords(4 * m, None)).normal(0.0, 1.0, m)
    moved = SecureGaussian(FixedWords(4 * m, k)).normal(0.0, 1.0, m)
    assert np.count_nonzero(base != moved) == 2


@given(st.integers(1, 40_000))
@settings(max_examples=25, deadline=None)
def test_torch_maths_on_the_same_uniforms_gives_the_same_noise(n: int) -> None:
    # DP-SGD draws a member's noise with torch's log, cos and sin (faster) on the same
    # CSPRNG uniforms and the same pairing: the values agree to float64 rounding.
    import torch

    ours = np.empty(n)
    SecureGaussian(ChaChaSource.from_seed(4)).standard_into(ours)
    theirs = torch.empty(n, dtype=torch.float64)
    SecureGaussian(ChaChaSource.from_seed(4)).standard_into(theirs, torch, torch.from_numpy)
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=1e-12, atol=1e-12)


@given(st.integers(0, 3000), st.integers(0, 3000))
@settings(max_examples=30, deadline=None)
def test_keystream_into_a_buffer_continues_the_same_stream(a: int, b: int) -> None:
    one, two = ChaChaSource.from_seed(11), ChaChaSource.from_seed(11)
    buffer = np.empty(max(a, b) + 8, np.uint64)
    got = np.concatenate([one.uint64_into(buffer, a).copy(), one.uint64(b)])
    assert np.array_equal(got, two.uint64(a + b))
    assert np.array_equal(got, _chacha20_words(11, a + b))  # the cipher's own keystream
    with pytest.raises(ValueError, match="contiguous buffer of 11 words"):
        one.uint64_into(np.empty(10, np.uint64), 3)


def test_a_keystream_longer_than_the_plaintext_buffer_is_the_cipher_s() -> None:
    n = 3 * (1 << 17) + 5  # 3 MiB and 40 bytes: three whole passes of zeros, then a part
    assert np.array_equal(ChaChaSource.from_seed(12).uint64(n), _chacha20_words(12, n))


def _chacha20_words(seed: int, n: int) -> np.ndarray:
    """``n`` keystream words of ``from_seed(seed)``'s key, straight from ``cryptography``."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    key = hashlib.sha256(b"p2pfed test noise seed " + str(seed).encode()).digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8").astype(np.uint64)


def test_bad_variance_is_refused_in_one_sentence() -> None:
    with pytest.raises(ConfigError, match="variance must be positive"):
        discrete_gaussian(0.0, 4, ChaChaSource.from_seed(0))
    with pytest.raises(ConfigError, match="variance must be positive"):
        discrete_gaussian(float("nan"), 4, ChaChaSource.from_seed(0))


def test_a_coin_the_float_path_would_get_wrong_is_decided_exactly() -> None:
    # U's 64 bits lie 300 units (≈1.6e-17) below exp(−1/16): exactly, U < exp(−γ) (accept),
    # but as a float64 the word rounds onto exp(−γ) itself, where `U < p` reads false.
    gamma = Fraction(1, 16)
    with sampling.decimal.localcontext() as ctx:
        ctx.prec = 60
        exact = (-(sampling.decimal.Decimal(1) / 16)).exp() * sampling.decimal.Decimal(2) ** 64
    word = int(exact) - 300
    assert float(np.float64(np.uint64(word)) * 2.0**-64) == math.exp(-1 / 16)
    coins = bernoulli_exp(np.array([1 / 16]), lambda _i: gamma, ScriptedSource([word]))
    assert bool(coins[0]) is True
