"""A member's round at model scale without needless passes over the model (issue 20 item 5).

Each pass over a 10 M-parameter model is 40 MB copied, mapped and faulted in; these tests
count the passes a round's steps make and check that the numbers are the same as before.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio

import p2pfed.daemon.memory
import p2pfed.node.peer as peer_module
import p2pfed.node.sync as sync_module
import p2pfed.training.state as state_module
import p2pfed.training.trainer as trainer_module
from p2pfed.node.sync import weights_digest
from p2pfed.training import LocalTrainer, TrainingConfig, build_model, load_builtin
from p2pfed.training.state import flatten, loads_verbatim, unflatten


def _trainer(**config: Any) -> LocalTrainer:
    data = load_builtin("breast_cancer")
    model = build_model("mlp", 30, 2, seed=3)
    options = TrainingConfig(local_steps=3, batch_size=8, **config)
    return LocalTrainer(model, options, torch.Generator().manual_seed(5), train=data)


def _count(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls = [0]
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fit_loads_the_model_once_and_flattens_it_never(
    monkeypatch: pytest.MonkeyPatch, momentum: float
) -> None:
    """The attack: ``fit`` used to load the state, then load it again and flatten it twice."""
    trainer, twin = _trainer(momentum=momentum), _trainer(momentum=momentum)
    start = trainer.shared_weights()
    state = unflatten(trainer.layout, start)
    loads = [_count(monkeypatch, m, "load_into") for m in (state_module, trainer_module)]
    flattens = _count(monkeypatch, trainer_module, "flatten")
    result = trainer.fit(state, 0)
    assert (sum(n[0] for n in loads), flattens[0]) == (1, 0)
    assert all(p.grad is None for p in trainer.model.parameters())
    # The same training as the vector path's, bit for bit.
    expected = twin.train_round(twin.train, start)
    assert result.metrics["loss"] == expected.loss and result.steps == expected.steps
    np.testing.assert_array_equal(flatten(trainer.layout, result.state) - start, expected.update)


def test_views_for_a_trainer_that_copies_in_and_a_copy_otherwise() -> None:
    trainer = _trainer()
    layout = trainer.layout
    assert loads_verbatim(trainer, layout)
    weights = trainer.shared_weights() + np.float32(0.5)
    views = unflatten(layout, weights, copy=False)
    assert all(np.shares_memory(t.numpy(), weights) for t in views.values())
    before = weights.copy()
    trainer.fit(views, 0)  # trains the module, never the views
    np.testing.assert_array_equal(weights, before)
    frozen = weights.copy()
    frozen.flags.writeable = False  # a fetched model may be read-only: then it is copied
    assert not any(np.shares_memory(t.numpy(), frozen) for t in unflatten(layout, frozen).values())
    assert not any(
        np.shares_memory(t.numpy(), frozen) for t in unflatten(layout, frozen, copy=False).values()
    )
    # A float64 model rounds what it is given: it does not hold the vector verbatim.
    wide = LocalTrainer(build_model("mlp", 30, 2, seed=3).double(), TrainingConfig())
    assert not loads_verbatim(wide, wide.layout)


class _ModelHashes:
    """Counts SHA-256 passes over at least ``size`` bytes (hashes of the whole model)."""

    def __init__(self, size: int) -> None:
        self.size, self.calls = size, 0

    def sha256(self, data: Any = b"") -> Any:
        if memoryview(data).nbytes >= self.size:
            self.calls += 1
        return hashlib.sha256(data)


async def test_a_committed_round_hashes_its_model_once_and_copies_it_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a round re-flattened the adopted model and hashed it again for its report,
    and copied the weights for training and again for evaluation."""
    from test_node import Consortium

    c = Consortium(tmp_path, 3)
    rounds, peers = 3, []
    copies: list[bool] = []
    flattens = _count(monkeypatch, peer_module, "flatten")
    real_unflatten = peer_module.unflatten

    def unflatten_spy(layout: Any, vector: Any, *, copy: bool = True) -> Any:
        copies.append(copy)
        return real_unflatten(layout, vector, copy=copy)

    monkeypatch.setattr(peer_module, "unflatten", unflatten_spy)
    hashes = _ModelHashes(1 << 62)
    monkeypatch.setattr(sync_module, "hashlib", hashes)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:

            async def one(k: int) -> None:
                async with c.peer(k) as peer:
                    peers.append(peer)
                    assert peer.verbatim
                    hashes.size = peer.weights.nbytes
                    reports = await peer.run(rounds, startup_timeout=5.0)
                    assert all(r.committed for r in reports)

            for k in range(3):
                nursery.start_soon(one, k)
    # Each member hashed each new model once (its certificate, report and the others'
    # probes share it) and the first model once: at most 1 + rounds per member.
    assert hashes.calls <= len(peers) * (1 + rounds), hashes.calls
    monkeypatch.undo()
    for p in peers:  # the certificate covers exactly the weights served
        assert p.certificate is not None and p.certificate.digest == weights_digest(p.weights)
    assert flattens[0] == len(peers)  # once each, at start-up: never to re-read an adopted model
    assert copies and not any(copies)  # the trainer got views of the weights, never copies
    assert len({p.weights.tobytes() for p in peers}) == 1
    for p in peers:  # the trainer holds exactly the weights the peer serves
        np.testing.assert_array_equal(flatten(p.layout, p.trainer.get_state()), p.weights)


def test_the_digest_cache_keeps_the_served_model_and_the_new_one() -> None:
    """The attack: hashing a round's new model for its certificate evicted the served one,
    so the other members' next probe hashed 40 MB again, and then the new one again."""
    calls: list[int] = []

    def digest(weights: Any) -> bytes:
        calls.append(1)
        return weights_digest(weights)

    cache = sync_module.DigestCache(digest)
    old, new = np.zeros(8, np.float32), np.ones(8, np.float32)
    cache(3, old)
    cache(4, new)  # the certificate's
    assert cache(3, old) == weights_digest(old) and cache(4, new) == weights_digest(new)
    assert len(calls) == 2
    cache(5, np.full(8, 2.0, np.float32))  # a third version: the oldest goes
    cache(3, old)
    assert len(calls) == 4


# A process fixes the daemon's threshold, then handles 400 ring-chunk-sized buffers (256 KiB
# of payload plus framing, as the ring and the transport do per chunk): page faults taken?
CHUNK_PROBE = """
import resource, runpy, sys
assert runpy.run_path(sys.argv[1])["return_freed_memory"]()
size = 256 * 1024 + 64
for _ in range(20):
    bytearray(size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(400):
    buffer = bytearray(size)
    del buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, rusage")
def test_ring_chunk_buffers_are_reused_from_the_heap_not_mapped_each_time() -> None:
    """The attack: at a 256 KiB threshold every chunk's buffers were mapped, faulted in page
    by page (65 faults each) and unmapped again, several times per chunk of a round."""
    module = Path(p2pfed.daemon.memory.__file__)
    done = subprocess.run(
        [sys.executable, "-c", CHUNK_PROBE, str(module)], capture_output=True, text=True, check=True
    )
    faults = int(done.stdout)
    assert faults < 400, f"{faults} page faults for 400 chunk-sized buffers"
