"""Bring your own: a researcher's data loader, partition file, model factory and graph file.

Theory of operation: a scenario may name code and files instead of built-in choices.

- ``[data] loader = "module:function"`` (or ``"path/file.py:function"``): the function is
  called with no arguments and returns ``(x_train, y_train, x_test, y_test)`` or the same
  with a fifth item, the partition (one sequence of training-row indices per peer), or a
  mapping with those keys (``partition`` optional). Arrays are used as given (your split,
  your preprocessing): features 2-D, labels integers 0..C-1.
- ``[partition] file = "split.json"``: a JSON list with one list of training-row indices
  per peer (or ``{"peers": [...]}``); it replaces the scheme (and a loader's partition).
- ``[model] factory = "module:function"``: called as ``function(features, classes)``, it
  returns a ``torch.nn.Module`` mapping ``[B, features]`` to ``[B, classes]`` logits; its
  own initialisation, run under a seed drawn from the scenario's init stream, gives the
  initial weights (``sim.models``).
- ``[topology] file = "graph.graphml"``: GraphML, GML, edge list or JSON (node-link too),
  read by ``topologies.load``; it must have exactly ``n`` nodes.

Every failure is a ``ConfigError`` naming the scenario key and what was wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p2pfed.errors import ConfigError
from p2pfed.training.data import Dataset
from sim.partition import Partition, pad_parts
from sim.scenario import DataSpec, TopologySpec

_FILE_LIMIT = 256 * 1024 * 1024
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def import_callable(text: str, key: str) -> Callable[..., Any]:
    """The function ``module:function`` or ``file.py:function`` names (``key`` for errors)."""
    target, _, name = text.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ConfigError(f"scenario key {key}: file {path} does not exist")
            module_name = f"_p2pfed_user_{abs(hash(str(path)))}"
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[module_name] = module
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:  # the user's module failed to import: say how, no traceback
        raise ConfigError(
            f"scenario key {key}: cannot import {target!r} ({type(exc).__name__}: {exc})"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"scenario key {key}: {target!r} has no function {name!r}")
    return function  # type: ignore[no-any-return]


def _array(value: Any, key: str, what: str, ndim: int) -> np.ndarray[Any, Any]:
    try:
        out = np.asarray(value)
    except Exception:  # any unconvertible object gets the same sentence
        out = np.asarray(None)
    if out.ndim != ndim or out.shape[0] == 0:
        raise ConfigError(f"scenario key {key}: {what} must be a non-empty {ndim}-D array")
    return out


def user_data(spec: DataSpec) -> tuple[Dataset, Dataset, int, list[Sequence[int]] | None]:
    """Call the loader; returns train and test sets, the class count, the partition or None."""
    key = "[data] loader"
    loaded = import_callable(spec.loader, key)()
    parts: Any = None
    if isinstance(loaded, Mapping):
        missing = [k for k in _KEYS if k not in loaded]
        if missing:
            raise ConfigError(f"scenario key {key}: the returned mapping lacks {missing[0]!r}")
        values = [loaded[k] for k in _KEYS]
        parts = loaded.get("partition")
    elif isinstance(loaded, tuple | list) and len(loaded) in (4, 5):
        values = list(loaded[:4])
        parts = loaded[4] if len(loaded) == 5 else None
    else:
        raise ConfigError(
            f"scenario key {key}: must return (x_train, y_train, x_test, y_test[, partition]) "
            "or a mapping with those keys"
        )
    x_train, x_test = (_array(values[i], key, _KEYS[i], 2) for i in (0, 2))
    y_train, y_test = (_array(values[i], key, _KEYS[i], 1) for i in (1, 3))
    if x_train.shape[1] != x_test.shape[1]:
        raise ConfigError(f"scenario key {key}: x_train and x_test have different feature counts")
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise ConfigError(f"scenario key {key}: x_{name} and y_{name} differ in length")
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
            raise ConfigError(f"scenario key {key}: x_{name} must hold finite numbers")
        if not np.issubdtype(y.dtype, np.integer) or int(y.min()) < 0:
            raise ConfigError(f"scenario key {key}: y_{name} must hold integer labels 0..C-1")
    classes = max(2, int(max(y_train.max(), y_test.max())) + 1)
    names = tuple(f"x{i}" for i in range(x_train.shape[1]))
    label = spec.loader.rpartition(":")[2]
    train = Dataset(x_train.astype(np.float64), y_train.astype(np.int64), names, f"{label}-train")
    test = Dataset(x_test.astype(np.float64), y_test.astype(np.int64), names, f"{label}-test")
    return train, test, classes, parts


def partition_from(parts: Any, n: int, train_size: int, key: str) -> Partition:
    """Check a given partition (one index list per peer) and pad it into a ``Partition``."""
    if isinstance(parts, Mapping):
        parts = parts.get("peers")
    if not isinstance(parts, Sequence) or isinstance(parts, str | bytes):
        raise ConfigError(f"scenario key {key}: the partition must be a list of index lists")
    if len(parts) != n:
        raise ConfigError(f"scenario key {key}: the partition has {len(parts)} peers, n = {n}")
    out = []
    for i, part in enumerate(parts):
        idx = np.asarray(part, dtype=np.int64) if len(part) else np.zeros(0, np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= train_size)):
            raise ConfigError(
                f"scenario key {key}: peer {i}'s indices must lie in [0, {train_size})"
            )
        if len(np.unique(idx)) != len(idx):
            raise ConfigError(f"scenario key {key}: peer {i} lists a training row twice")
        out.append(idx)
    return pad_parts(out)


def read_partition_file(path: str, n: int, train_size: int) -> Partition:
    """A ``[partition] file``: JSON, one list of training-row indices per peer."""
    key = "[partition] file"
    try:
        if Path(path).stat().st_size > _FILE_LIMIT:
            raise ConfigError(f"scenario key {key}: {path} is over 256 MiB")
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"scenario key {key}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"scenario key {key}: {path} is not readable JSON ({exc})") from None
    try:
        return partition_from(doc, n, train_size, key)
    except (TypeError, ValueError):
        raise ConfigError(f"scenario key {key}: {path} must hold lists of integers") from None


def load_topology_file(spec: TopologySpec, n: int) -> Any:
    """The ``[topology] file`` graph, with the spec's mixing rule and laziness, of n nodes."""
    import topologies

    try:
        topo = topologies.load(spec.file, mixing=spec.mixing)
        if spec.lazy > 0.0:
            topo = topo.with_mixing(spec.mixing, spec.lazy)
    except topologies.TopologyError as exc:
        raise ConfigError(f"scenario key [topology] file is unusable: {exc}") from None
    if topo.n != n:
        raise ConfigError(
            f"scenario key [topology] file {spec.file} has {topo.n} nodes but n = {n}"
        )
    return topo
