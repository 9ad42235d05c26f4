import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfed.errors import ConfigError, DataError
from p2pfed.privacy.mechanisms import (
    NoiseMode,
    add_gaussian_noise,
    clip,
    clip_per_layer,
    l2_norm,
    noise_std,
    per_layer_bounds,
)

vectors = hnp.arrays(
    np.float64,
    st.integers(1, 200),
    elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(update=vectors, s=st.floats(1e-3, 1e3))
def test_clip_bounds_norm_and_keeps_direction(update: np.ndarray, s: float) -> None:
    out = clip(update, s)
    assert l2_norm(out) <= s * (1 + 1e-9)
    norm = l2_norm(update)
    if norm <= s:
        np.testing.assert_array_equal(out, update)  # never scaled up, untouched if inside
    else:
        np.testing.assert_allclose(out * norm / s, update, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    s=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_clip_per_layer_bounds_each_layer(sizes: list[int], s: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    update = rng.normal(0, 10, size=sum(sizes))
    out, sensitivity = clip_per_layer(update, [(n,) for n in sizes], s)
    assert sensitivity == pytest.approx(s)
    bounds = per_layer_bounds(s, len(sizes))
    start = 0
    for n, b in zip(sizes, bounds, strict=True):
        assert l2_norm(out[start : start + n]) <= b * (1 + 1e-9)
        start += n
    assert l2_norm(out) <= s * (1 + 1e-9)


def test_clip_per_layer_with_slices_and_own_bounds() -> None:
    update = np.array([3.0, 4.0, 0.0, 1.0, 0.0], dtype=np.float32)
    out, sens = clip_per_layer(update, [slice(0, 2), slice(2, 5)], [1.0, 2.0])
    np.testing.assert_allclose(out, [0.6, 0.8, 0.0, 1.0, 0.0], rtol=1e-6)
    assert out.dtype == np.float32
    assert sens == pytest.approx(math.sqrt(5))
    with pytest.raises(ConfigError, match="unclipped"):
        clip_per_layer(update, [slice(0, 2)], 1.0)
    with pytest.raises(ConfigError, match="disjoint"):
        clip_per_layer(update, [slice(0, 3), slice(2, 5)], 1.0)
    with pytest.raises(ConfigError, match="cover 4 values"):
        clip_per_layer(update, [(2, 2)], 1.0)
    with pytest.raises(ConfigError, match="2 clipping bounds for 1 layers"):
        clip_per_layer(update, [(5,)], [1.0, 1.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_update_is_refused_everywhere(bad: float) -> None:
    update = np.ones(10)
    update[3] = bad
    rng = np.random.default_rng(0)
    for call in (
        lambda: clip(update, 1.0),
        lambda: clip_per_layer(update, [(10,)], 1.0),
        lambda: add_gaussian_noise(update, 1.0, rng),
    ):
        with pytest.raises(DataError, match="1 NaN or infinite value"):
            call()


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="clipping norm S must be > 0"):
        clip(np.ones(3), 0.0)
    with pytest.raises(ConfigError, match="σ must be > 0"):
        noise_std(0.0, 1.0, NoiseMode.LOCAL)
    with pytest.raises(ConfigError, match="exceeds the number of peers"):
        noise_std(1.0, 1.0, NoiseMode.DISTRIBUTED, n_peers=3, min_peers=4)
    with pytest.raises(ValueError, match="'global'"):
        noise_std(1.0, 1.0, "global")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="floating-point"):
        clip(np.ones(3, dtype=np.int64), 1.0)  # type: ignore[arg-type]


def test_local_noise_statistics_seeded() -> None:
    rng = np.random.default_rng(1234)
    d, sigma, s = 200_000, 1.3, 0.7
    out = add_gaussian_noise(np.zeros(d), noise_std(sigma, s, NoiseMode.LOCAL), rng)
    std = sigma * s
    assert abs(out.mean()) < 5 * std / math.sqrt(d)
    assert out.std() == pytest.approx(std, rel=0.01)
    # kurtosis of a Gaussian is 3
    assert np.mean((out / out.std()) ** 4) == pytest.approx(3.0, abs=0.05)
    again = add_gaussian_noise(np.zeros(d), std, np.random.default_rng(1234))
    np.testing.assert_array_equal(out, again)  # injectable seed → reproducible


@pytest.mark.parametrize(("n", "m"), [(8, None), (10, 7)])
def test_distributed_shares_sum_to_sigma_squared(n: int, m: int | None) -> None:
    sigma, s, d = 2.0, 0.5, 50_000
    rng = np.random.default_rng(7)
    std = noise_std(sigma, s, NoiseMode.DISTRIBUTED, n_peers=n, min_peers=m)
    k = n if m is None else m  # shares guaranteed to be in the sum
    total = sum(add_gaussian_noise(np.zeros(d), std, rng) for _ in range(k))
    assert np.var(total) == pytest.approx((sigma * s) ** 2, rel=0.02)
    assert std == pytest.approx(sigma * s / math.sqrt(k))


@settings(max_examples=60, deadline=None)
@given(
    update=hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e4, 1e4, width=32)),
    s=st.floats(1e-3, 1e3),
)
def test_clip_float32_is_strictly_within_bound(update: np.ndarray, s: float) -> None:
    out = clip(update, s)
    assert out.dtype == np.float32
    assert l2_norm(out) <= s
    per, _ = clip_per_layer(update, [slice(0, update.size)], s)
    assert l2_norm(per) <= s
