import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError, DataError
from p2pfed.secagg.fixedpoint import FixedPoint


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.01, 100.0),
    st.integers(4, 24),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=200),
)
def test_encoding_error_is_below_one_step_of_the_clipped_value(clip, level_bits, values):
    fp = FixedPoint(clip=clip, level_bits=level_bits)
    x = np.array(values)
    words = fp.encode(x, np.random.default_rng(0), peers=1)
    assert words.dtype == np.uint32
    assert words.max() <= fp.levels - 1
    error = np.abs(fp.decode(words) - np.clip(x, -clip, clip))
    assert np.all(error <= fp.step * (1 + 1e-9))


def test_sum_decoding_is_within_n_steps():
    fp = FixedPoint(clip=2.0, level_bits=16)
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-3, 3, 1000) for _ in range(7)]
    total = sum(fp.encode(x, rng, peers=7).astype(np.uint64) for x in xs).astype(np.uint32)
    decoded = fp.decode_sum(total, 7)
    exact = sum(np.clip(x, -2, 2) for x in xs)
    assert np.all(np.abs(decoded - exact) <= 7 * fp.step * (1 + 1e-9))


def test_stochastic_rounding_is_unbiased():
    fp = FixedPoint(clip=1.0, level_bits=4)  # coarse grid: step 2/15
    x = np.full(200_000, 0.3)  # sits 0.25 of a step above a grid point
    decoded = fp.decode(fp.encode(x, np.random.default_rng(7), peers=1))
    # Mean within 5 standard errors of the true value; a deterministic rounding would be
    # off by a quarter step (≈0.033), far outside.
    stderr = decoded.std() / np.sqrt(x.size)
    assert abs(decoded.mean() - 0.3) < 5 * stderr
    assert set(np.unique(decoded).round(6)) <= {round(v, 6) for v in (0.2, 1 / 3)}


def test_sums_that_could_wrap_are_refused():
    fp = FixedPoint(level_bits=22, ring_bits=32)
    assert fp.max_peers == (2**32 - 1) // (2**22 - 1)
    fp.check_peers(fp.max_peers)
    with pytest.raises(ConfigError, match="wrap"):
        fp.check_peers(fp.max_peers + 1)
    with pytest.raises(ConfigError, match="wrap"):
        fp.encode(np.zeros(3), np.random.default_rng(0), peers=fp.max_peers + 1)
    # the largest allowed sum really does not wrap
    top = np.full(4, fp.levels - 1, dtype=np.uint64) * fp.max_peers
    assert top.max() < 2**32
    assert FixedPoint(level_bits=40, ring_bits=64).max_peers > 10**6


def test_bad_parameters_and_inputs():
    with pytest.raises(ConfigError):
        FixedPoint(clip=0.0)
    with pytest.raises(ConfigError):
        FixedPoint(level_bits=32, ring_bits=32)
    with pytest.raises(ConfigError):
        FixedPoint(ring_bits=16)
    fp = FixedPoint()
    with pytest.raises(DataError, match="NaN"):
        fp.encode(np.array([0.0, np.nan]), np.random.default_rng(0), peers=2)
    with pytest.raises(DataError, match="one-dimensional"):
        fp.encode(np.zeros((2, 2)), np.random.default_rng(0), peers=2)
