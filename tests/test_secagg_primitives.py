import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from p2pfed.errors import ConfigError, DataError
from p2pfed.secagg.harness import run_cohort
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.primitives import (
    AgreementKeyPair,
    MaskExpander,
    agree,
    derive_key,
    pair_mask_key,
    self_mask_key,
    share_encryption_key,
)


def keys(seed: int) -> AgreementKeyPair:
    return AgreementKeyPair.from_secret(bytes([seed]) * 32)


def test_agreement_is_symmetric_and_pair_keys_match():
    a, b = keys(1), keys(2)
    assert agree(a.secret, b.public) == agree(b.secret, a.public)
    s = agree(a.secret, b.public)
    assert pair_mask_key(s, "c", 1, "alice", "bob") == pair_mask_key(s, "c", 1, "bob", "alice")


def test_low_order_public_key_is_refused():
    with pytest.raises(DataError, match="low order"):
        agree(keys(1).secret, bytes(32))


def test_every_domain_component_changes_the_key():
    s = bytes(range(32))
    base = pair_mask_key(s, "c", 1, "a", "b")
    variants = {
        pair_mask_key(s, "d", 1, "a", "b"),
        pair_mask_key(s, "c", 2, "a", "b"),
        pair_mask_key(s, "c", 1, "a", "x"),
        self_mask_key(s, "c", 1, "a"),
        share_encryption_key(s, "c", 1, "a", "b"),
        share_encryption_key(s, "c", 1, "b", "a"),
    }
    assert base not in variants and len(variants) == 6
    # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    assert derive_key(s, "ab", "c") != derive_key(s, "a", "bc")


def test_kdf_refuses_short_input():
    with pytest.raises(ConfigError):
        derive_key(b"short", "c")


def test_mask_is_the_chacha20_keystream_in_little_endian_words():
    key = bytes(range(32))
    words = 100_003  # not a multiple of the chunk size
    expander = MaskExpander(chunk_bytes=4096)
    got = np.zeros(words, np.uint32)
    expander.apply(got, key, 1)
    raw = (
        Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(4 * words))
    )
    assert np.array_equal(got, np.frombuffer(raw, dtype="<u4"))
    got64 = np.zeros(1000, np.uint64)
    expander.apply(got64, key, 1)
    raw64 = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(8000))
    assert np.array_equal(got64, np.frombuffer(raw64, dtype="<u8"))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5000), st.sampled_from([32, 64]), st.binary(min_size=32, max_size=32))
def test_adding_then_subtracting_a_mask_restores_the_vector(d, bits, key):
    rng = np.random.default_rng(d)
    dtype = np.uint32 if bits == 32 else np.uint64
    x = rng.integers(0, np.iinfo(dtype).max, d, dtype=dtype, endpoint=True)
    y = x.copy()
    expander = MaskExpander(chunk_bytes=1024)
    expander.apply(y, key, 1)
    assert d < 4 or not np.array_equal(x, y)
    expander.apply(y, key, -1)
    assert np.array_equal(x, y)


def test_mask_refuses_bad_vectors():
    expander = MaskExpander()
    with pytest.raises(DataError):
        expander.apply(np.zeros(4, dtype=np.int32), bytes(32), 1)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        expander.apply(np.zeros((4, 4), dtype=np.uint32)[:, 0], bytes(32), 1)
    with pytest.raises(ConfigError):
        expander.apply(np.zeros(4, dtype=np.uint32), bytes(31), 1)
    with pytest.raises(ConfigError):
        expander.apply(np.zeros(4, dtype=np.uint32), bytes(32), 2)


def test_masked_vectors_are_indistinguishable_from_uniform():
    # All-zero inputs: whatever structure a masked vector has comes from the masks.
    d = 1 << 16
    config = SecAggConfig("chi", 3, d)
    inputs = {f"p{i}": np.zeros(d, dtype=np.uint32) for i in range(4)}
    seen: dict[str, np.ndarray] = {}

    class Capture:
        def sum(self, vectors, ring_bits):
            seen.update({k: v.copy() for k, v in vectors.items()})
            from p2pfed.secagg.summation import DirectMaskedSum

            return DirectMaskedSum().sum(vectors, ring_bits)

    run = run_cohort(config, inputs, masked_sum=Capture(), random_seed=11)
    assert all(np.array_equal(r, np.zeros(d, np.uint32)) for r in run.results.values())
    for vector in seen.values():
        byte_counts = np.bincount(vector.view(np.uint8), minlength=256)
        top_counts = np.bincount((vector >> 24).astype(np.int64), minlength=256)
        low_counts = np.bincount((vector & 0xFF).astype(np.int64), minlength=256)
        for counts in (byte_counts, top_counts, low_counts):
            assert chisquare(counts).pvalue > 1e-4
    # Two peers' masked vectors are not correlated either.
    a, b = list(seen.values())[:2]
    joint = np.bincount(((a >> 28) * 16 + (b >> 28)).astype(np.int64), minlength=256)
    assert chisquare(joint).pvalue > 1e-4


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3000), st.lists(st.sampled_from([1, -1]), min_size=0, max_size=5))
def test_fused_masking_equals_one_key_at_a_time(d, signs):
    keyed = [(bytes([i]) * 32, s) for i, s in enumerate(signs)]
    x = np.arange(d, dtype=np.uint32)
    fused, serial = x.copy(), x.copy()
    MaskExpander(chunk_bytes=256).apply_many(fused, keyed)
    for key, sign in keyed:
        MaskExpander(chunk_bytes=1024).apply(serial, key, sign)
    assert np.array_equal(fused, serial)
