"""Self-centred clipping (ClippedGossip): the pure mixing rule and its adaptive radius."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.collectives.robust import (
    byzantine_weight,
    clip,
    clipped_gossip,
    clipping_radius,
    robust_mix,
)
from p2pfed.errors import LocalProtocolError


@st.composite
def neighbourhoods(draw: st.DrawFn) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """An own vector, k neighbour vectors and k non-negative weights summing to < 1."""
    d = draw(st.integers(1, 6))
    k = draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = rng.normal(size=d) * scale
    others = rng.normal(size=(k, d)) * scale
    raw = rng.random(k + 1) + 0.05
    w = raw[:k] / raw.sum()
    return x, others, w


def plain_gossip(x: npt.NDArray[Any], others: npt.NDArray[Any], w: npt.NDArray[Any]) -> Any:
    return (1 - w.sum()) * x + w @ others


@settings(max_examples=200, deadline=None)
@given(neighbourhoods())
def test_without_clipping_it_is_plain_gossip(hood: Any) -> None:
    x, others, w = hood
    far = float(np.linalg.norm(others - x, axis=1).max(initial=0.0))
    got = clipped_gossip(x, others, w, far)
    np.testing.assert_allclose(got, plain_gossip(x, others, w), rtol=1e-9, atol=1e-9 * (1 + far))
    # δ = 0 means no Byzantine neighbour is assumed: the radius clips nobody.
    tau = clipping_radius(x, others, w, 0.0)
    np.testing.assert_allclose(clipped_gossip(x, others, w, tau), got, rtol=1e-12, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(neighbourhoods(), st.floats(0.0, 1e4))
def test_the_update_moves_at_most_the_weighted_radius(hood: Any, tau: float) -> None:
    x, others, w = hood
    moved = np.linalg.norm(clipped_gossip(x, others, w, tau) - x)
    assert moved <= w.sum() * tau * (1 + 1e-9) + 1e-12


@settings(max_examples=100, deadline=None)
@given(neighbourhoods(), st.randoms(use_true_random=False))
def test_neighbour_order_does_not_matter(hood: Any, shuffler: Any) -> None:
    x, others, w = hood
    perm = list(range(len(w)))
    shuffler.shuffle(perm)
    for n_byz in (0, 1, 2):
        a = robust_mix(x, others, w, n_byz)
        b = robust_mix(x, others[perm], w[perm], n_byz)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(neighbourhoods(), st.floats(1e3, 1e12), st.integers(0, 5))
def test_one_far_neighbour_cannot_drag_beyond_the_honest_radius(
    hood: Any, size: float, which: int
) -> None:
    x, others, w = hood
    if len(w) < 2:
        return
    j = which % len(w)
    attacked = others.copy()
    attacked[j] = x + size * np.linalg.norm(others - x, axis=1).max() * np.ones_like(x)
    honest = np.delete(others, j, axis=0)
    farthest_honest = float(np.linalg.norm(honest - x, axis=1).max())
    moved = np.linalg.norm(robust_mix(x, attacked, w, 1) - x)
    assert moved <= w.sum() * farthest_honest * (1 + 1e-9) + 1e-12


def test_the_radius_clips_the_farthest_neighbours_up_to_the_byzantine_weight() -> None:
    x = np.zeros(2)
    others = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    w = np.array([0.2, 0.2, 0.2, 0.2])
    assert clipping_radius(x, others, w, 0.0) == 4.0
    assert clipping_radius(x, others, w, 0.2) == 3.0  # the reference rule: 2nd-largest
    assert clipping_radius(x, others, w, 0.3) == 2.0  # at least δ of weight is clipped
    assert clipping_radius(x, others, w, 0.4) == 2.0
    assert clipping_radius(x, others, w, 0.8 - 1e-9) == 0.0
    assert byzantine_weight(np.array([0.1, 0.3, 0.2]), 2) == pytest.approx(0.5)
    assert byzantine_weight(np.array([0.1, 0.3, 0.2]), 0) == 0.0


def test_clip_scales_only_what_is_longer_than_the_radius() -> None:
    np.testing.assert_allclose(clip(np.array([3.0, 4.0]), 10.0), [3.0, 4.0])
    np.testing.assert_allclose(clip(np.array([3.0, 4.0]), 1.0), [0.6, 0.8])
    np.testing.assert_allclose(clip(np.zeros(3), 0.0), np.zeros(3))


@pytest.mark.parametrize(
    ("x", "others", "w", "tau", "says"),
    [
        (np.array([np.nan, 0.0]), np.zeros((1, 2)), np.array([0.5]), 1.0, "NaN"),
        (np.zeros(2), np.array([[np.inf, 0.0]]), np.array([0.5]), 1.0, "NaN or infinite"),
        (np.zeros(2), np.zeros((1, 3)), np.array([0.5]), 1.0, "(k, 2) array"),
        (np.zeros((2, 2)), np.zeros((1, 2)), np.array([0.5]), 1.0, "flat own vector"),
        (np.zeros(2), np.zeros((2, 2)), np.array([0.5]), 1.0, "one weight per neighbour"),
        (np.zeros(2), np.zeros((2, 2)), np.array([0.7, 0.7]), 1.0, "sum to at most 1"),
        (np.zeros(2), np.zeros((1, 2)), np.array([-0.1]), 1.0, "non-negative"),
        (np.zeros(2), np.zeros((1, 2)), np.array([0.5]), -1.0, "radius"),
        (np.zeros(2), np.zeros((1, 2)), np.array([0.5]), float("nan"), "radius"),
    ],
)
def test_bad_input_is_refused_with_one_sentence(
    x: Any, others: Any, w: Any, tau: float, says: str
) -> None:
    with pytest.raises(LocalProtocolError, match=None) as info:
        clipped_gossip(x, others, w, tau)
    assert says in str(info.value)
    assert str(info.value).count(". ") == 0


def test_bad_radius_inputs_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="Byzantine weight bound"):
        clipping_radius(np.zeros(2), np.zeros((1, 2)), np.array([0.5]), 1.0)
    with pytest.raises(LocalProtocolError, match="Byzantine neighbours"):
        byzantine_weight(np.array([0.5]), -1)
