"""Compressed updates: packing, quantiser, error feedback, the packed secure ring, refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.collectives import RingConfig
from p2pfed.collectives.agreement_state import AgreementTiming
from p2pfed.collectives.messages import Ready
from p2pfed.collectives.ring import RingAllReduce
from p2pfed.collectives.round import ControlService
from p2pfed.collectives.secure import SecureOutcome, SecureRingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.config import load_config
from p2pfed.daemon.build import compression_tag
from p2pfed.daemon.prepare import check_compression
from p2pfed.daemon.study import check_matches
from p2pfed.errors import ConfigError, DataError, ReasonCode, RemoteProtocolError
from p2pfed.identity import Feature, RosterError, StudyProtocol
from p2pfed.node.roster_sync import session_id
from p2pfed.secagg import DirectMaskedSum
from p2pfed.secagg.compression import (
    ErrorFeedback,
    QuantisedEncoder,
    compress_with_feedback,
    pack_words,
    packed_size,
    sum_width,
    unpack_words,
)
from p2pfed.secagg.harness import identity_seed, make_identities, seeded_random_bytes
from p2pfed.secagg.primitives import MaskExpander
from p2pfed.transport import MemoryNetwork


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 64),
    wide=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 300),
)
def test_pack_unpack_round_trip(bits: int, wide: bool, seed: int, count: int) -> None:
    dtype: Any = np.uint64 if wide or bits > 32 else np.uint32
    high = 1 << bits
    words = np.random.default_rng(seed).integers(0, high, count, dtype=np.uint64).astype(dtype)
    data = pack_words(words, bits)
    assert len(data) == packed_size(count, bits) == -(-count * bits // 8)
    np.testing.assert_array_equal(unpack_words(data, bits, count, dtype), words)


def test_packing_refuses_words_too_wide_and_bytes_of_the_wrong_length() -> None:
    with pytest.raises(DataError, match="does not fit in 4 bits"):
        pack_words(np.array([16], np.uint32), 4)
    with pytest.raises(DataError, match="do not hold 3 packed 10-bit words"):
        unpack_words(bytes(3), 10, 3)


@settings(max_examples=40, deadline=None)
@given(
    level_bits=st.sampled_from([4, 8]),
    clip=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(0.0, 20.0),
)
def test_quantiser_error_is_below_one_step(
    level_bits: int, clip: float, seed: int, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    encoder = QuantisedEncoder(clip, level_bits, 5)
    values = rng.normal(0.0, scale * clip, 500)
    words = encoder.encode(values, rng, 5)
    assert int(words.max()) < 1 << level_bits
    error = np.abs(encoder.decode(words) - np.clip(values, -clip, clip))
    assert error.max() <= encoder.step * (1 + 1e-9)


@settings(max_examples=20, deadline=None)
@given(level_bits=st.sampled_from([4, 8]), seed=st.integers(0, 2**32 - 1))
def test_quantiser_is_unbiased(level_bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    encoder = QuantisedEncoder(1.0, level_bits, 2)
    values = rng.uniform(-1.0, 1.0, 8)
    draws = 4000
    decoded = encoder.decode(encoder.encode(np.tile(values, draws), rng, 1)).reshape(draws, 8)
    # Each draw errs by at most one step with variance ≤ step²/4: 6 standard errors.
    tolerance = 6 * (encoder.step / 2) / np.sqrt(draws)
    assert np.abs(decoded.mean(axis=0) - values).max() < tolerance


@pytest.mark.parametrize(("level_bits", "peers"), [(8, 1), (8, 3), (4, 5), (8, 33), (4, 2)])
def test_a_sum_of_maximal_words_never_wraps_the_packed_ring(level_bits: int, peers: int) -> None:
    """The width is just enough: n words at the top level sum exactly mod 2^w."""
    encoder = QuantisedEncoder(1.0, level_bits, peers)
    assert encoder.width == sum_width(level_bits, peers) <= level_bits + peers.bit_length()
    top = np.full(6, (1 << level_bits) - 1, np.uint32)
    rings = [
        RingAllReduce(top, r, peers, round=0, chunk_bytes=8, modulus_bits=encoder.width)
        for r in range(peers)
    ]
    outbox = {r: ring.start() for r, ring in enumerate(rings)}
    while any(outbox.values()):
        for r in range(peers):
            sent, outbox[r] = outbox[r], []
            for chunk in sent:
                outbox[(r + 1) % peers] += rings[(r + 1) % peers].receive(chunk, f"p{r}")
    total = rings[0].result
    assert int(total[0]) == peers * ((1 << level_bits) - 1)
    np.testing.assert_allclose(encoder.decode_sum(total, peers), np.full(6, peers * 1.0))


def test_encoder_refuses_sums_that_could_wrap_or_outgrow_the_ring() -> None:
    with pytest.raises(ConfigError, match="more than the 32-bit ring"):
        QuantisedEncoder(1.0, 8, 1 << 25)
    encoder = QuantisedEncoder(1.0, 8, 3)
    with pytest.raises(ConfigError, match="a sum of 4 peers does not fit"):
        encoder.check_peers(4)


def test_packed_chunk_of_the_wrong_length_is_refused() -> None:
    ring = RingAllReduce(np.zeros(40, np.uint32), 0, 2, round=0, modulus_bits=10)
    ring.start()
    other = RingAllReduce(np.zeros(40, np.uint32), 1, 2, round=0, modulus_bits=9)
    (chunk,) = other.start()
    with pytest.raises(RemoteProtocolError, match="words of 10 bits") as caught:
        ring.receive(chunk, "p1")
    assert caught.value.reason is ReasonCode.WRONG_SHAPE


def test_error_feedback_keeps_the_running_sum_within_one_step() -> None:
    """With EF what was sent over T rounds is the intended total minus one residual."""
    rng = np.random.default_rng(3)
    encoder = QuantisedEncoder(0.5, 4, 3)
    updates = rng.normal(0.0, 0.01, (200, 64))  # far below one step (0.067): rounding is all
    sent: dict[bool, npt.NDArray[np.float64]] = {}
    for use in (True, False):
        feedback = ErrorFeedback() if use else None
        total = np.zeros(64)
        for update in updates:
            total += encoder.decode(compress_with_feedback(encoder, feedback, update, rng, 3))
        sent[use] = total
    intended = updates.sum(axis=0)
    assert np.abs(sent[True] - intended).max() <= encoder.step * (1 + 1e-9)
    # Without feedback the rounding errors add up like a random walk, far beyond one step.
    assert np.abs(sent[False] - intended).max() > 3 * encoder.step


def test_masked_packed_words_sum_to_the_plain_sum_modulo_the_width() -> None:
    """Masks drawn in Z_2^32 cancel modulo 2^w: the packed sum of masked words is exact."""
    rng = np.random.default_rng(9)
    encoder = QuantisedEncoder(1.0, 8, 3)
    words = {f"h{i}": encoder.encode(rng.normal(0, 0.3, 1000), rng, 3) for i in range(3)}
    pair_key = {(i, j): bytes([i, j]) * 16 for i in range(3) for j in range(i + 1, 3)}
    masked = {}
    for i, (name, w) in enumerate(sorted(words.items())):
        vector = w.copy()
        # Pairwise masks of Z_2^32: +PRG(k_ij) at the lower index, −PRG(k_ij) at the higher.
        signs = [(pair_key[min(i, j), max(i, j)], 1 if i < j else -1) for j in range(3) if j != i]
        MaskExpander().apply_many(vector, signs)
        masked[name] = encoder.reduce(vector)
    total, _ = DirectMaskedSum().sum(masked, 32)
    plain = sum(w.astype(np.uint64) for w in words.values())
    np.testing.assert_array_equal(encoder.reduce(total), plain)
    # Each masked word alone looks uniform: it is not its input.
    assert not np.array_equal(masked["h0"], words["h0"])


TIMING = AgreementTiming(collect_window=1.0, takeover_timeout=3.0, commit_timeout=6.0)


async def secure_sums(
    inputs: dict[str, npt.NDArray[np.uint32]], ring: RingConfig
) -> dict[str, SecureOutcome]:
    net = MemoryNetwork()
    signers, identities = make_identities(sorted(inputs))
    outcomes: dict[str, SecureOutcome] = {}
    ready = trio.Event()
    built: set[str] = set()

    async def peer(me: str) -> None:
        async with net.open(me) as transport:
            secure = SecureRingRound(
                transport,
                "compress-test",
                1,
                identities,
                signers[me],
                Ed25519CohortSigner(identity_seed(me), identities),
                timing=TIMING,
                ring_config=ring,
                stage_timeout=3.0,
                random_bytes=seeded_random_bytes(7, me),
            )
            built.add(me)
            if len(built) == len(inputs):
                ready.set()
            await ready.wait()
            outcomes[me] = await secure.aggregate(inputs[me], 5)
            await trio.sleep(4.0)  # stay up for slower peers' reveals

    async with trio.open_nursery() as nursery:
        for name in sorted(inputs):
            nursery.start_soon(peer, name)
    return outcomes


async def test_secure_ring_sums_packed_words_with_three_times_fewer_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = np.random.default_rng(5)
    encoder = QuantisedEncoder(1.0, 8, 3)
    inputs = {f"h{i}": encoder.encode(rng.normal(0, 0.3, 3000), rng, 3) for i in range(3)}
    plain = sum(w.astype(np.uint64) for w in inputs.values())
    sent = {}
    for bits in (None, encoder.width):
        outcomes = await secure_sums(inputs, RingConfig(chunk_bytes=4096, modulus_bits=bits))
        for got in outcomes.values():
            assert got.ok and got.result is not None, got.abort_reason
            assert got.survivors == frozenset(inputs)
            np.testing.assert_array_equal(encoder.reduce(got.result), plain)
        ring = outcomes["h0"].ring
        assert ring is not None and ring.result is not None
        sent[bits] = ring.result.bytes_sent  # payload and framing, as counted on the stream
    print(f"bytes per peer: uncompressed {sent[None]}, q8 packed {sent[encoder.width]}")
    assert sent[None] >= 3 * sent[encoder.width]


def write_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[node]\nname = "a"\n' + extra)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[rounds]\ncompression = "q2"\n', r"\[rounds\] compression = 'q2' must be one of"),
        (
            '[rounds]\ncompression = "q8"\n[privacy]\nmode = "distributed"\n',
            r"cannot be combined with \[privacy\] mode = distributed",
        ),
        (
            '[rounds]\ncompression = "q8"\nmode = "gossip"\n[privacy]\nmode = "local"\n',
            r"compression = 'q8' needs \[rounds\] mode = ring with \[secagg\] enabled",
        ),
        (
            '[rounds]\ncompression = "q4"\nweighting = "examples"\n[privacy]\nmode = "off"\n',
            r'needs \[rounds\] weighting = "uniform"',
        ),
    ],
)
def test_config_refuses_compression_it_cannot_honour(tmp_path: Path, text: str, match: str) -> None:
    config = load_config(write_config(tmp_path, text))
    with pytest.raises(ConfigError, match=match):
        check_compression(config)


def test_config_accepts_q8_with_local_dp(tmp_path: Path) -> None:
    text = '[rounds]\ncompression = "q8"\n[privacy]\nmode = "local"\n'
    config = load_config(write_config(tmp_path, text))
    check_compression(config)
    assert config.rounds.compression == "q8"


def test_a_study_protocol_declares_compression_and_the_config_must_match(tmp_path: Path) -> None:
    base = StudyProtocol("cardio", (Feature("age", "int", 60.0, 12.5),), "outcome", (0, 1))
    q8 = dataclasses.replace(base, compression="q8")
    assert "compression" not in base.body()  # documents signed before the field keep their hash
    assert q8.digest() != base.digest()
    assert StudyProtocol.from_json(q8.to_json()).compression == "q8"
    config = load_config(write_config(tmp_path, ""))
    with pytest.raises(ConfigError) as info:
        check_matches(q8, config)
    assert (
        "config key [rounds] compression = 'none' differs from the study protocol's "
        "compression 'q8'" in str(info.value)
    )
    with pytest.raises(RosterError, match="compression must be one of"):
        dataclasses.replace(base, compression="q2")


async def test_a_member_declaring_another_compression_is_refused_and_named(
    tmp_path: Path,
) -> None:
    """Its round messages carry another session: refused at agreement, never mis-summed."""
    mine = load_config(write_config(tmp_path, '[privacy]\nmode = "local"\n'))
    theirs = load_config(
        write_config(tmp_path, '[rounds]\ncompression = "q8"\n[privacy]\nmode = "local"\n')
    )
    ours, other = (
        session_id("cardio", 1, "ab" * 32, tag=compression_tag(c)) for c in (mine, theirs)
    )
    assert ours != other
    network = MemoryNetwork()
    with trio.fail_after(5):
        async with network.open("q8-member") as them, network.open("me") as me:
            receiving = ControlService(me, ours, timeout=1)
            mailbox = receiving.open_round(0)
            await ControlService(them, other, timeout=1).send("me", Ready(0, 0, 0))
            with pytest.raises(trio.WouldBlock):
                mailbox.receive_nowait()
            (refusal,) = receiving.exclusions
            assert refusal.peer == "q8-member" and "+q8" in refusal.detail
