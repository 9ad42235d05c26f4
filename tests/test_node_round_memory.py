"""A member's round at model scale: the same numbers as before, without whole-model copies."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from torch.utils.data import DataLoader, TensorDataset

from p2pfed.durable import atomic_write, seal, sealed_parts, unseal
from p2pfed.errors import DataError
from p2pfed.governance.models import ModelRegistry, model_hash, serialize_model
from p2pfed.node.aggregators import decoded_mean, weighted_mean, weighted_vector
from p2pfed.privacy.ddg import DiscreteGaussianEncoder, plan_ddg
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.training import LocalTrainer, TrainingConfig, build_model, load_builtin
from p2pfed.training.state import (
    flatten,
    layout_of,
    load_checkpoint,
    save_checkpoint,
    unflatten,
    update_of,
)
from p2pfed.training.torch_trainer import TorchTrainer


def _ddg(d: int) -> DiscreteGaussianEncoder:
    plan = plan_ddg(
        n_peers=5, min_contributors=3, collusion=1, dimension=d, clip_norm=1.0, noise_multiplier=1
    )
    return DiscreteGaussianEncoder(plan)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 320),
    st.integers(1, 5),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_chunked_decoding_gives_the_whole_vector_mean_bit_for_bit(
    d: int, chunk: int, k: int, weighted: bool, discrete: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    encoder = _ddg(d) if discrete else FixedPoint(clip=4.0)
    total = rng.integers(0, 2**32, size=d, dtype=np.uint32)
    if weighted and rng.random() < 0.3:
        total[-1] = 0  # Σv of nobody: no mean
    step = encoder.step if isinstance(encoder, FixedPoint) else 0.0
    error = k * step if weighted else 0.0
    expected = weighted_mean(encoder.decode_sum(total, k), k, weighted, error)
    got = decoded_mean(encoder, total, k, weighted, error, chunk=chunk)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_decoding_a_big_sum_keeps_its_float64_temporaries_to_a_chunk() -> None:
    """The attack: a 2^20-word sum whose float64 decode and mean would be 8 MB each."""
    d, chunk = 1 << 20, 1 << 14
    total = np.random.default_rng(0).integers(0, 2**32, size=d, dtype=np.uint32)
    tracemalloc.start()
    try:
        mean = decoded_mean(FixedPoint(), total, 4, False, chunk=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mean is not None
    # The float32 mean (4 MB) and a few float64 chunks (128 KB each).
    assert peak < mean.nbytes + 8 * chunk * 8, f"peak {peak} bytes for a {mean.nbytes}-byte mean"


def test_a_uniform_update_goes_to_the_encoder_without_a_float64_copy() -> None:
    update = np.ones(1000, dtype=np.float32)
    assert weighted_vector(update, None) is update
    # The fixed-point words are those of the float64 vector: the encoder widens per chunk.
    words = FixedPoint().encode(update, np.random.default_rng(1), 3, chunk=128)
    wide = FixedPoint().encode(update.astype(np.float64), np.random.default_rng(1), 3)
    np.testing.assert_array_equal(words, wide)
    weighted = weighted_vector(update, 0.5)
    assert weighted.dtype == np.float64 and weighted.size == 1001 and weighted[-1] == 0.5


def test_a_streamed_write_is_the_joined_bytes_and_a_failure_midway_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "checkpoint.pt"
    atomic_write(target, b"old")
    atomic_write(target, [b"ab", memoryview(b"cd"), np.arange(2, dtype="<u2").data])
    assert target.read_bytes() == b"abcd\x00\x00\x01\x00"

    def broken() -> Iterator[bytes]:
        yield b"half of a model"
        raise DataError("the model cannot be serialised")

    with pytest.raises(DataError):
        atomic_write(target, broken())
    assert target.read_bytes() == b"abcd\x00\x00\x01\x00"  # the crash tore nothing
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left
    payload = bytes(range(256)) * 3
    assert b"".join(sealed_parts(memoryview(payload))) == seal(payload)
    assert unseal(seal(payload), "x") == payload


def test_committing_a_big_model_writes_it_from_its_own_memory(tmp_path: Path) -> None:
    """The attack: a 2^20-parameter model (4 MB) whose checkpoint and registry version would
    each be joined into another copy (or two) before the write."""
    module = torch.nn.Linear(1024, 1024)
    rows = TensorDataset(torch.zeros(2, 1024), torch.zeros(2, 1024))
    trainer = TorchTrainer(module, torch.nn.MSELoss(), DataLoader(rows, batch_size=2))
    tensors = [(n, p.detach().numpy()) for n, p in module.named_parameters()]
    model_bytes = sum(a.nbytes for _, a in tensors)
    registry = ModelRegistry(tmp_path / "models")
    tracemalloc.start()
    try:
        manifest = registry.add(0, tensors, parent_hash=None)
        _, registry_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        save_checkpoint(trainer, tmp_path / "checkpoint.pt", 0, {})
        _, checkpoint_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert registry_peak < model_bytes / 4, f"{registry_peak} bytes to store {model_bytes}"
    # torch.save builds the archive in memory once (≈ the model); no join or seal copies.
    assert checkpoint_peak < 1.6 * model_bytes, f"{checkpoint_peak} bytes for {model_bytes}"
    stored = (tmp_path / "models").glob("*/model.bin")
    assert next(stored).read_bytes() == serialize_model(tensors)
    assert manifest.model_hash == model_hash(tensors)
    assert load_checkpoint(trainer, tmp_path / "checkpoint.pt")[0] == 0


def test_a_round_keeps_neither_the_trained_state_nor_the_gradients_past_training() -> None:
    module = torch.nn.Linear(8, 2)
    rows = TensorDataset(torch.randn(16, 8), torch.randint(0, 2, (16,)))
    trainer = TorchTrainer(module, torch.nn.CrossEntropyLoss(), DataLoader(rows, batch_size=4))
    layout = layout_of(trainer.get_state(), trainer.policy)
    weights = flatten(layout, trainer.get_state())
    result = trainer.fit(unflatten(layout, weights), 0)
    assert all(p.grad is None for p in module.parameters())  # freed, not idle until next round
    trained = flatten(layout, result.state)
    update, kept = update_of(layout, result, weights)
    assert kept.state == {} and kept.steps == result.steps and kept.metrics == result.metrics
    np.testing.assert_array_equal(update, trained - weights)
    assert not np.shares_memory(trained, module.weight.detach().numpy())
    broken = replace(result, state={k: v * np.inf for k, v in result.state.items()})
    with pytest.raises(DataError, match="NaN or infinite"):
        update_of(layout, broken, weights)


def test_the_daemons_trainer_frees_its_gradients_and_returns_the_same_update() -> None:
    data = load_builtin("breast_cancer")
    config = TrainingConfig(local_steps=3, batch_size=8, momentum=0.5)

    def trained() -> tuple[LocalTrainer, NDArray[np.float32]]:
        model = build_model("mlp", 30, 2, seed=3)
        trainer = LocalTrainer(model, config, torch.Generator().manual_seed(5), train=data)
        start = trainer.shared_weights()
        return trainer, trainer.train_round(data, start).update + start

    trainer, weights = trained()
    assert all(p.grad is None for p in trainer.model.parameters())
    # The update made in place is local − global exactly as before.
    np.testing.assert_array_equal(weights, trained()[1])
    np.testing.assert_array_equal(trainer.shared_weights(), trained()[0].shared_weights())
    result = trainer.fit(unflatten(trainer.layout, trainer.shared_weights()), 1)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert set(result.state) == set(trainer.model.state_dict())
