"""Data sets for the simulator: a pluggable registry of classification tasks.

Theory of operation: a loader takes the ``[data]`` spec and a numpy ``Generator`` and returns
a ``Dataset`` — float features, integer labels 0..C-1, already split into a stratified
training and test part and standardised with the *training* mean and deviation (test data
never leaks into preprocessing). New data sets are added with ``@register_dataset("name")``.

Built in: scikit-learn's bundled ``breast_cancer`` (569 × 30, 2 classes), ``digits``
(1797 × 64, 10 classes), ``diabetes`` (442 × 10) and a seeded ``synthetic`` task.
``diabetes`` is a regression target (disease progression); we **binarise it at the median of
the training targets** (above median = class 1), so every data set is a classification task
and accuracy is comparable across scenarios.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError
from sim.scenario import DataSpec

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclasses.dataclass(frozen=True, slots=True)
class Dataset:
    """A standardised classification task split into train and test parts."""

    name: str
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray
    classes: int

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])


@dataclasses.dataclass(frozen=True, slots=True)
class RawData:
    """What a loader returns: features and a target (class labels, or a real value)."""

    x: FloatArray
    target: NDArray[np.float64] | IntArray
    #: A real-valued target: binarised at the median of the training part.
    regression: bool = False


Loader = Callable[[DataSpec, np.random.Generator], RawData]
_REGISTRY: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding a loader (returns all features and the target) under ``name``."""

    def add(loader: Loader) -> Loader:
        _REGISTRY[name] = loader
        return loader

    return add


def dataset_names() -> tuple[str, ...]:
    """Names of the registered data sets."""
    return tuple(sorted(_REGISTRY))


@register_dataset("breast_cancer")
def _breast_cancer(spec: DataSpec, rng: np.random.Generator) -> RawData:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return RawData(np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.int64))


@register_dataset("digits")
def _digits(spec: DataSpec, rng: np.random.Generator) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawData(np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.int64))


@register_dataset("diabetes")
def _diabetes(spec: DataSpec, rng: np.random.Generator) -> RawData:
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    target = np.asarray(bunch.target, np.float64)
    return RawData(np.asarray(bunch.data, np.float64), target, regression=True)


@register_dataset("synthetic")
def _synthetic(spec: DataSpec, rng: np.random.Generator) -> RawData:
    from sklearn.datasets import make_classification

    informative = max(2, min(spec.features, spec.features // 2 + 1))
    if spec.classes * 2 > 2**informative:
        raise ConfigError(
            f"[data] classes = {spec.classes} needs more features than {spec.features} "
            "for the synthetic generator"
        )
    x, y = make_classification(
        n_samples=spec.samples,
        n_features=spec.features,
        n_informative=informative,
        n_redundant=0,
        n_classes=spec.classes,
        class_sep=1.0,
        random_state=int(rng.integers(2**31 - 1)),
    )
    return RawData(np.asarray(x, np.float64), np.asarray(y, np.int64))


def _stratified_split(
    y: IntArray, test_fraction: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    train: list[IntArray] = []
    test: list[IntArray] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = round(len(idx) * test_fraction)
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_dataset(spec: DataSpec, rng: np.random.Generator) -> Dataset:
    """Load, split (stratified) and standardise the data set the spec names."""
    loader = _REGISTRY.get(spec.name)
    if loader is None:
        raise ConfigError(
            f"scenario key [data] name {spec.name!r} is not a data set; "
            f"expected one of {', '.join(dataset_names())}"
        )
    raw = loader(spec, rng)
    x = raw.x
    if raw.regression:
        # Split on the real target first (unstratified), then binarise at the median of the
        # training part only, so the threshold never sees test data.
        order = rng.permutation(len(raw.target))
        cut = round(len(order) * spec.test_fraction)
        test, train = np.sort(order[:cut]), np.sort(order[cut:])
        median = float(np.median(raw.target[train]))
        y = (raw.target > median).astype(np.int64)
    else:
        y = np.asarray(raw.target, np.int64)
        train, test = _stratified_split(y, spec.test_fraction, rng)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0.0] = 1.0
    xs = (x - mean) / std
    classes = int(y.max()) + 1
    return Dataset(spec.name, xs[train], y[train], xs[test], y[test], classes)
