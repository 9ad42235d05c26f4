"""Chunked fixed-point encoding: the same words as encoding at once, in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from p2pfed.secagg.fixedpoint import CHUNK, FixedPoint


def at_once(fp: FixedPoint, values: np.ndarray, seed: int) -> np.ndarray:
    """The encoding written directly, whole vector at once (the reference)."""
    rng = np.random.default_rng(seed)
    scaled = (np.clip(values.astype(np.float64), -fp.clip, fp.clip) + fp.clip) / fp.step
    floor = np.floor(scaled)
    floor += rng.random(scaled.shape[0]) < (scaled - floor)
    return np.minimum(floor, fp.levels - 1).astype(np.uint32)


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(
        st.sampled_from([np.float32, np.float64]),
        st.integers(0, 300),
        elements=st.floats(-20, 20, width=32),
    ),
    chunk=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunked_words_equal_the_whole_vector_encoding(
    values: np.ndarray, chunk: int, seed: int
) -> None:
    fp = FixedPoint(clip=8.0, level_bits=22, ring_bits=32)
    words = fp.encode(values, np.random.default_rng(seed), 4, chunk=chunk)
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(words, at_once(fp, values, seed))


def test_encoding_a_big_update_keeps_its_temporaries_to_a_few_chunks() -> None:
    n = 1 << 22  # 4 M float32 values: 16 MB in, 16 MB of words out
    values = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    tracemalloc.start()
    try:
        words = FixedPoint().encode(values, np.random.default_rng(1), 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The words themselves plus a handful of chunk-sized float64/bool temporaries; encoding
    # at once would hold about four float64 copies of the update (128 MB) at its peak.
    assert peak <= words.nbytes + 5 * CHUNK * 8, peak
