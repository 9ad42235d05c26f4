"""Dealing training samples out to N virtual peers (IID and non-IID schemes).

Theory of operation: a partition is a padded index matrix ``[N, M]`` into the training set
plus per-peer counts ``m_i`` (row i's first m_i entries are peer i's samples; the rest is
padding). Padding lets the simulator gather every peer's minibatch with one indexing
operation and mask the padded slots.

Two modes. With ``samples_per_peer = 0`` the training set is *split* (each sample belongs to
exactly one peer):

- ``iid``: a random permutation cut into N near-equal parts;
- ``dirichlet``: for each class c, p ~ Dir_N(α) and peer j gets a fraction p_j of class c
  (α = 0.1 very skewed, 1 moderate; peers may end up empty);
- ``classes``: peer i holds k classes (consecutive in a random class order, so every class
  is covered when N·k ≥ C), each class split evenly among its holders;
- ``quantity``: label-agnostic, sizes ∝ p ~ Dir_N(α).

With ``samples_per_peer = s > 0`` every peer *draws* its data (with replacement across peers,
without within a peer where possible), so N may exceed the data set (N = 10,000 on 455
samples): ``iid`` draws uniformly; ``dirichlet`` draws labels from q_i ~ Dir_C(α) (Hsu et al.
2019); ``classes`` draws labels uniformly from the peer's k classes; ``quantity`` draws
round(s·N·p_i) ≥ 1 samples with p ~ Dir_N(α).

Split schemes may leave a site empty (Dirichlet with small α, N above the data set size).
``min_examples = m`` redraws the whole partition from the same stream until every site holds
at least m examples (a ``ConfigError`` after ``MAX_REDRAWS`` tries); with 0, empty sites are
kept and the exact-mean algorithms leave them out (``sim.algorithms``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError
from sim.scenario import PartitionSpec

IntArray = NDArray[np.int64]


@dataclasses.dataclass(frozen=True, slots=True)
class Partition:
    """Peer i holds training samples ``indices[i, :counts[i]]``."""

    indices: IntArray
    counts: IntArray

    @property
    def n(self) -> int:
        return int(self.counts.shape[0])


def pad_parts(parts: list[IntArray]) -> Partition:
    """Per-peer index arrays as a padded ``Partition``."""
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    width = max(1, int(counts.max(initial=0)))
    indices = np.zeros((len(parts), width), dtype=np.int64)
    for i, part in enumerate(parts):
        indices[i, : len(part)] = part
    return Partition(indices, counts)


def _cut(idx: IntArray, proportions: NDArray[np.float64]) -> list[IntArray]:
    bounds = (np.cumsum(proportions)[:-1] * len(idx)).round().astype(np.int64)
    return list(np.split(idx, bounds))


def _peer_classes(n: int, classes: int, k: int, rng: np.random.Generator) -> IntArray:
    order = rng.permutation(classes)
    return np.stack([order[(i * k + np.arange(k)) % classes] for i in range(n)]).astype(np.int64)


def _split(spec: PartitionSpec, y: IntArray, n: int, rng: np.random.Generator) -> list[IntArray]:
    classes = int(y.max()) + 1
    if spec.scheme == "iid":
        return list(np.array_split(rng.permutation(len(y)), n))
    if spec.scheme == "quantity":
        return _cut(rng.permutation(len(y)), rng.dirichlet(np.full(n, spec.alpha)))
    parts: list[list[IntArray]] = [[] for _ in range(n)]
    if spec.scheme == "dirichlet":
        for c in range(classes):
            idx = rng.permutation(np.flatnonzero(y == c))
            for i, chunk in enumerate(_cut(idx, rng.dirichlet(np.full(n, spec.alpha)))):
                parts[i].append(chunk)
    else:  # classes
        held = _peer_classes(n, classes, spec.classes_per_peer, rng)
        for c in range(classes):
            holders = np.flatnonzero((held == c).any(axis=1))
            idx = rng.permutation(np.flatnonzero(y == c))
            chunks = np.array_split(idx, max(1, len(holders)))
            for holder, chunk in zip(holders, chunks, strict=False):
                parts[int(holder)].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def _draw(spec: PartitionSpec, y: IntArray, n: int, rng: np.random.Generator) -> list[IntArray]:
    classes = int(y.max()) + 1
    s = spec.samples_per_peer
    by_class = [np.flatnonzero(y == c) for c in range(classes)]

    def from_labels(labels: IntArray) -> IntArray:
        out = np.empty(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            where = np.flatnonzero(labels == c)
            pool = by_class[int(c)]
            out[where] = rng.choice(pool, size=len(where), replace=len(where) > len(pool))
        return np.sort(out)

    if spec.scheme == "iid":
        return [np.sort(rng.choice(len(y), size=s, replace=s > len(y))) for _ in range(n)]
    if spec.scheme == "quantity":
        sizes = np.maximum(1, (rng.dirichlet(np.full(n, spec.alpha)) * s * n).round())
        return [np.sort(rng.choice(len(y), size=int(m), replace=int(m) > len(y))) for m in sizes]
    if spec.scheme == "dirichlet":
        q = rng.dirichlet(np.full(classes, spec.alpha), size=n)
        return [from_labels(rng.choice(classes, size=s, p=q[i])) for i in range(n)]
    held = _peer_classes(n, classes, spec.classes_per_peer, rng)
    return [from_labels(rng.choice(held[i], size=s)) for i in range(n)]


def partition(
    spec: PartitionSpec,
    y: IntArray,
    n: int,
    rng: np.random.Generator,
    given: object | None = None,
) -> Partition:
    """Deal the training labels ``y`` out to ``n`` peers as the spec says.

    A ``[partition] file`` wins, then a partition ``given`` by the data loader, then the
    scheme (``sim.sources`` checks the first two).
    """
    if spec.file or given is not None:
        from sim import sources  # sources imports this module

        if spec.file:
            return sources.read_partition_file(spec.file, n, len(y))
        return sources.partition_from(given, n, len(y), "[data] loader")
    classes = int(y.max()) + 1
    if spec.scheme == "classes" and spec.classes_per_peer > classes:
        raise ConfigError(
            f"scenario key [partition] classes_per_peer = {spec.classes_per_peer} exceeds "
            f"the {classes} classes of the data set"
        )
    if spec.min_examples * n > len(y) and spec.samples_per_peer == 0:
        raise ConfigError(
            f"scenario key [partition] min_examples = {spec.min_examples} cannot hold for "
            f"{n} sites splitting {len(y)} training examples"
        )
    for _ in range(MAX_REDRAWS):
        parts = _draw(spec, y, n, rng) if spec.samples_per_peer > 0 else _split(spec, y, n, rng)
        if min(len(p) for p in parts) >= spec.min_examples:
            return pad_parts(parts)
    raise ConfigError(
        f"scenario key [partition] min_examples = {spec.min_examples}: no partition in "
        f"{MAX_REDRAWS} draws gave every site that many examples (raise alpha or lower it)"
    )


#: Draws of a partition tried before ``min_examples`` is declared unreachable.
MAX_REDRAWS = 100


def label_histogram(part: Partition, y: IntArray, classes: int) -> NDArray[np.int64]:
    """Per-peer class counts ``[N, C]`` (for reports on how skewed a partition is)."""
    hist = np.zeros((part.n, classes), dtype=np.int64)
    for i in range(part.n):
        hist[i] = np.bincount(y[part.indices[i, : part.counts[i]]], minlength=classes)
    return hist
