"""Data sets for the simulator: a pluggable registry of classification tasks.

Theory of operation: a loader takes the ``[data]`` spec and a numpy ``Generator`` and returns
a ``RawData`` (``p2pfed.training.data``); ``load_dataset`` splits it into a stratified
training and test part, standardises both with the *training* mean and deviation (test data
never leaks into preprocessing) and returns them as a ``SplitData`` of two
``p2pfed.training.data.Dataset``s (float64, integer labels 0..C-1). New data sets are added
with ``@register_dataset("name")``.

Built in: the daemon's bundled sets (``p2pfed.training.data.load_raw``: scikit-learn's
``breast_cancer``, 569 × 30, 2 classes; ``digits``, 1797 × 64, 10 classes; ``diabetes``,
442 × 10) and a seeded ``synthetic`` task. ``diabetes`` is a regression target (disease
progression); we **binarise it at the median of the training targets** (above median =
class 1), so every data set is a classification task and accuracy is comparable across
scenarios.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from p2pfed.errors import ConfigError
from p2pfed.training.data import (
    BUILTIN_DATASETS,
    Dataset,
    RawData,
    load_raw,
    stratified_indices,
)
from sim.scenario import DataSpec


@dataclasses.dataclass(frozen=True, slots=True)
class SplitData:
    """A standardised classification task split into train and test parts."""

    name: str
    train: Dataset
    test: Dataset
    classes: int
    #: The partition a ``[data] loader`` returned (one index list per peer), if any.
    partition: object | None = None

    @property
    def features(self) -> int:
        """Number of feature columns."""
        return self.train.n_features


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


def _bundled(name: str) -> Loader:
    def loader(spec: DataSpec, rng: np.random.Generator) -> RawData:
        return load_raw(name)

    return loader


for _name in BUILTIN_DATASETS:
    register_dataset(_name)(_bundled(_name))


@register_dataset("synthetic")
def _synthetic(spec: DataSpec, rng: np.random.Generator) -> RawData:
    from sklearn.datasets import make_classification  # 1.6 s to import: only when used

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
    names = tuple(f"x{i}" for i in range(spec.features))
    return RawData(np.asarray(x, np.float64), np.asarray(y, np.int64), names)


def load_dataset(spec: DataSpec, rng: np.random.Generator) -> SplitData:
    """Load, split (stratified) and standardise the data set the spec names.

    A ``[data] loader`` replaces all of it: its arrays are used as returned (``sim.sources``).
    """
    if spec.loader:
        from sim.sources import user_data  # sources imports this module's neighbours

        train_set, test_set, count, given = user_data(spec)
        return SplitData(spec.loader, train_set, test_set, count, given)
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
        train, test = stratified_indices(y, spec.test_fraction, rng)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0.0] = 1.0
    xs = (x - mean) / std
    classes = int(y.max()) + 1
    names = raw.feature_names
    return SplitData(
        spec.name,
        Dataset(xs[train], y[train], names, f"{spec.name}-train"),
        Dataset(xs[test], y[test], names, f"{spec.name}-test"),
        classes,
    )
