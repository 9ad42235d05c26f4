"""The discrete Gaussian encoder works a chunk at a time: same words, bounded temporaries."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from p2pfed.privacy.ddg import DDGPlan, DiscreteGaussianEncoder, plan_ddg
from p2pfed.privacy.sampling import BitSource, ChaChaSource, discrete_gaussian


def _plan(d: int) -> DDGPlan:
    return plan_ddg(
        n_peers=4, min_contributors=3, collusion=1, dimension=d, clip_norm=1.0, noise_multiplier=1.0
    )


def _whole_rounding(plan: DDGPlan, x: NDArray[np.float64], source: BitSource) -> NDArray[np.int64]:
    """The encoder's rounding done on the whole vector at once (its definition)."""
    scaled = x / plan.gamma
    floor = np.floor(scaled)
    while True:
        u = (source.uint64(x.size) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        rounded = floor + (u < scaled - floor)
        if float(np.linalg.norm(rounded)) <= plan.sensitivity:
            return rounded.astype(np.int64)


def _update(d: int, seed: int, norm: float) -> NDArray[np.float32]:
    x = np.random.default_rng(seed).normal(size=d)
    return (x / np.linalg.norm(x) * norm).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400), st.integers(1, 500), st.integers(0, 2**16), st.floats(0.0, 0.999))
def test_chunked_encoding_equals_whole_vector_rounding_and_per_chunk_noise(
    d: int, chunk: int, seed: int, norm: float
) -> None:
    plan = _plan(d)
    x = _update(d, seed, norm)
    source = ChaChaSource.from_seed(seed)
    rounded = _whole_rounding(plan, x.astype(np.float64), source)
    noise = np.concatenate(
        [
            discrete_gaussian(plan.local_variance, min(chunk, d - lo), source)
            for lo in range(0, d, chunk)
        ]
    )
    expected = (rounded + noise).view(np.uint64).astype(np.uint32)
    got = DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(seed)).encode_parts(x, chunk=chunk)
    np.testing.assert_array_equal(got[0], rounded)
    np.testing.assert_array_equal(got[1], noise)
    np.testing.assert_array_equal(got[2], expected)
    words = DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(seed)).encode(
        x, None, 4, chunk=chunk
    )
    np.testing.assert_array_equal(words, expected)


def test_one_chunk_is_the_whole_vector_encoding() -> None:
    d = 3000
    plan, x = _plan(d), _update(d, 7, 0.9)
    chunked = DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(1)).encode(x, None, 4, chunk=256)
    source = ChaChaSource.from_seed(1)
    whole = _whole_rounding(plan, x.astype(np.float64), source)
    whole += discrete_gaussian(plan.local_variance, d, source)
    at_once = DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(1)).encode(x, None, 4, chunk=d)
    np.testing.assert_array_equal(at_once, whole.view(np.uint64).astype(np.uint32))
    # Chunks draw the noise in another order: other words, the same distribution.
    assert not np.array_equal(chunked, at_once)
    signal = DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(1)).round(x)
    spread = [np.std(w.view(np.int32) - signal) for w in (chunked, at_once)]
    sigma = float(plan.local_variance) ** 0.5
    assert all(abs(s / sigma - 1) < 0.1 for s in spread)


def test_encoding_a_big_update_keeps_its_temporaries_to_a_few_chunks() -> None:
    """The attack: a 2^18-coordinate update whose whole-vector float64 copies would be 2 MB each."""
    d, chunk = 1 << 18, 1 << 13
    plan, x = _plan(d), _update(d, 3, 1.0 - 1e-6)
    encoder = DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(5))
    tracemalloc.start()
    try:
        words = encoder.encode(x, None, 4, chunk=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The words themselves (1 MB) plus temporaries of a few chunks (64 KB of float64 each);
    # whole-vector temporaries would be about ten copies of 2 MB.
    assert peak < words.nbytes + 40 * chunk * 8, f"peak {peak} bytes for {words.nbytes} of words"
