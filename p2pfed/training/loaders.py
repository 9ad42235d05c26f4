"""Data by reference: ``[data] loader = "module:function"`` returning a torch ``Dataset``.

Theory of operation: the daemon imports ``function``, calls it with ``[data] args`` as
keyword arguments and reads every item of the ``torch.utils.data.Dataset`` it returns as an
``(x, y)`` pair: ``x`` any tensor or array (an image [1, 8, 8], a row [f]), ``y`` a class
number. All examples must share one shape and hold only finite values, and labels must be
non-negative whole numbers; the first item that breaks a rule is named in one sentence. The
result is an ordinary ``p2pfed.training.data.Dataset`` whose rows are the flattened examples
and whose ``shape`` restores them for the model, so the daemon's validation (label set and
skew, class count, sample count), normalisation and training apply to it unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from p2pfed.errors import ConfigError, DataError
from p2pfed.training.data import Dataset

MAX_EXAMPLES = 10_000_000
"""More items than any site's data set plausibly holds: a loader gone wrong, refused."""


def load_reference(spec: str, args: Mapping[str, object]) -> Dataset:
    """The data set ``function(**args)`` of ``spec`` (``module:function``) returns, checked."""
    module_name, _, attr = spec.partition(":")
    where = f"[data] loader {spec!r}"
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # ImportError, AttributeError, or the module's own failure
        raise ConfigError(f"{where} cannot be imported ({type(exc).__name__}: {exc})") from None
    try:
        items = function(**args)
        n = len(items)
    except Exception as exc:  # the user's code: reported in one sentence, not a traceback
        raise DataError(f"{where} failed ({type(exc).__name__}: {exc})") from None
    if not hasattr(items, "__getitem__") or not 1 <= n <= MAX_EXAMPLES:
        raise DataError(
            f"{where} must return a torch Dataset of 1 to {MAX_EXAMPLES} (x, y) pairs, "
            f"got {type(items).__name__} of length {n}"
        )
    xs: list[np.ndarray[Any, Any]] = []
    ys: list[int] = []
    for i in range(n):
        try:
            x, y = _example(items[i], where, i)
        except DataError:
            raise
        except Exception as exc:  # __getitem__ of the user's Dataset
            raise DataError(f"{where}: item {i} failed ({type(exc).__name__}: {exc})") from None
        if xs and x.shape != xs[0].shape:
            raise DataError(
                f"{where}: item {i} has shape {list(x.shape)} but item 0 has "
                f"{list(xs[0].shape)}; every example must have one shape"
            )
        xs.append(x)
        ys.append(y)
    shape = tuple(int(s) for s in xs[0].shape)
    flat = np.stack([x.reshape(-1) for x in xs]).astype(np.float32)
    names = tuple(f"x{j}" for j in range(flat.shape[1]))
    return Dataset(flat, np.array(ys, dtype=np.int64), names, attr, shape or (1,))


def _example(item: object, where: str, i: int) -> tuple[np.ndarray[Any, Any], int]:
    """Item ``i`` as (float64 array, label); ``DataError`` naming the item otherwise."""
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise DataError(f"{where}: item {i} is {type(item).__name__}, not an (x, y) pair")
    x_raw, y_raw = item
    try:
        x = np.asarray(_numpy(x_raw), dtype=np.float64)
        y = np.asarray(_numpy(y_raw), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: item {i} does not hold numbers ({exc})") from None
    if x.size == 0:
        raise DataError(f"{where}: item {i} has an empty x")
    # Why here and not in validation: an image's NaN is not a missing table cell to count;
    # it would poison every gradient of the round.
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: item {i}'s x holds NaN or infinite values; clean them first")
    if y.size != 1 or not np.isfinite(y).all() or not float(y.reshape(-1)[0]).is_integer():
        raise DataError(f"{where}: item {i}'s label {y_raw!r} is not one whole class number")
    label = int(y.reshape(-1)[0])
    if label < 0:
        raise DataError(f"{where}: item {i}'s label {label} is negative; classes count from 0")
    return x, label


def _numpy(value: object) -> object:
    """A torch tensor as its array (without importing torch here); anything else unchanged."""
    detach = getattr(value, "detach", None)
    return detach().cpu().numpy() if callable(detach) else value
