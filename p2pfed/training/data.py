"""Tabular data for local training: loading, built-in clinical data sets, and splits.

Theory of operation: a ``Dataset`` is a float feature matrix (float32 for the daemon's
trainer; the simulator keeps float64), int64 labels and the feature names, checked on
construction (shapes agree, labels are non-negative integers). Loading never silently fixes
anything: missing values stay NaN so that validation (``p2pfed.training.validation``) can
count and report them before a node joins; the trainer refuses non-finite features.
Built-in sets are scikit-learn's bundled copies (offline), read by ``load_raw`` — the one
loader the daemon (``load_builtin``) and the simulator (``sim.data``) share; they differ
only in where diabetes's real-valued target is cut into two classes.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import DataError

BUILTIN_DATASETS = ("breast_cancer", "diabetes", "digits")
"""Data sets bundled with scikit-learn; diabetes is binarised at its median progression."""

_MAX_CSV_BYTES = 2 * 1024**3


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``x`` [n, f] (float32 to train), labels ``y`` [n] int64, and the feature names.

    ``shape``: each example's shape as the model takes it (an image's [1, 8, 8]); empty for a
    table row. ``x`` always holds examples flattened to rows, so validation and
    normalisation treat pixels as columns.
    """

    x: NDArray[np.floating[Any]]
    y: NDArray[np.int64]
    feature_names: tuple[str, ...]
    name: str = "data"
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim != 2:
            raise DataError(f"{self.name}: features must be a 2-D table, got {self.x.ndim}-D")
        if self.y.shape != (self.x.shape[0],):
            raise DataError(
                f"{self.name}: {self.x.shape[0]} feature rows but {self.y.shape[0]} labels"
            )
        if len(self.feature_names) != self.x.shape[1]:
            names, cols = len(self.feature_names), self.x.shape[1]
            raise DataError(f"{self.name}: {names} feature names for {cols} columns")
        if self.y.size and self.y.min() < 0:
            raise DataError(f"{self.name}: labels must be non-negative class indices")
        if self.shape and math.prod(self.shape) != self.x.shape[1]:
            raise DataError(
                f"{self.name}: examples of shape {list(self.shape)} are not rows of "
                f"{self.x.shape[1]} values"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(self.x.shape[1])

    def subset(self, index: NDArray[np.int64], name: str | None = None) -> Dataset:
        """The rows at ``index``."""
        return self.with_x(self.x[index], name or self.name, self.y[index])

    def with_x(
        self, x: NDArray[np.floating[Any]], name: str, y: NDArray[np.int64] | None = None
    ) -> Dataset:
        """The same kind of data set (names, example shape) holding ``x`` (and ``y``)."""
        return Dataset(x, self.y if y is None else y, self.feature_names, name, self.shape)

    def inputs(self) -> NDArray[np.floating[Any]]:
        """``x`` shaped as the model takes it: [n, *shape], or the [n, f] table."""
        return self.x.reshape(len(self), *self.shape) if self.shape else self.x


@dataclass(frozen=True, slots=True)
class RawData:
    """A table as loaded: float64 features, its target (class labels, or a real value)."""

    x: NDArray[np.float64]
    target: NDArray[np.float64] | NDArray[np.int64]
    feature_names: tuple[str, ...]
    #: A real-valued target, which each user binarises (at a median of its choosing).
    regression: bool = False


def load_raw(name: str) -> RawData:
    """One of ``BUILTIN_DATASETS`` as scikit-learn ships it (diabetes: its real target)."""
    from sklearn import datasets  # 1.6 s to import: only when a data set is loaded

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
        "digits": datasets.load_digits,
    }
    if name not in loaders:
        known = ", ".join(BUILTIN_DATASETS)
        raise DataError(f"unknown built-in data set {name!r}; choose one of {known}")
    bunch = loaders[name]()
    names = tuple(str(f) for f in bunch.feature_names)
    x = np.asarray(bunch.data, dtype=np.float64)
    if name == "diabetes":
        return RawData(x, np.asarray(bunch.target, dtype=np.float64), names, regression=True)
    return RawData(x, np.asarray(bunch.target, dtype=np.int64), names)


def load_builtin(name: str) -> Dataset:
    """One of ``BUILTIN_DATASETS`` as float32, not standardised; diabetes cut at its median."""
    raw = load_raw(name)
    y = (raw.target > np.median(raw.target)) if raw.regression else raw.target
    return Dataset(raw.x.astype(np.float32), np.asarray(y, dtype=np.int64), raw.feature_names, name)


def load_csv(
    path: str | Path, label_column: str, feature_columns: list[str] | None = None
) -> Dataset:
    """Read a CSV with a header row; empty cells and NA/NaN become NaN (reported, not fixed).

    Raises ``DataError`` naming the file and the problem: missing file or column, a
    non-numeric cell (with its line), a non-integer label.
    """
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_CSV_BYTES:
            raise DataError(f"{path}: file is over the 2 GiB limit for CSV input")
        handle = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: the file is empty (a header row is needed)") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
        header = [h.strip() for h in header]
        features = _features(header, label_column, feature_columns, f"{path}", " in the header")
        cols = [header.index(c) for c in features]
        label_idx = header.index(label_column)
        rows: list[list[float]] = []
        labels: list[int] = []
        try:
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{lineno}: {len(row)} cells where the header has {len(header)}"
                    )
                rows.append([_cell(row[i], path, lineno, header[i]) for i in cols])
                labels.append(_label(row[label_idx], path, lineno))
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
    x = np.array(rows, dtype=np.float32).reshape(len(rows), len(features))
    return Dataset(x, np.array(labels, dtype=np.int64), tuple(features), path.name)


_NA = {"", "na", "nan", "null", "none", "?"}


def _features(
    names: list[str], label: str, wanted: list[str] | None, where: str, place: str
) -> list[str]:
    """The feature columns (``wanted``, or every column but the label), all present."""
    if label not in names:
        raise DataError(f"{where}: no label column {label!r}{place}")
    features = wanted or [n for n in names if n != label]
    missing = [c for c in features if c not in names]
    if missing:
        # One sentence per missing column, so an operator fixes them all in one go.
        raise DataError("; ".join(f"{where}: no feature column {c!r}{place}" for c in missing))
    return features


def _cell(text: str, path: Path, lineno: int, column: str) -> float:
    t = text.strip()
    if t.lower() in _NA:
        return float("nan")
    try:
        return float(t)
    except ValueError:
        raise DataError(f"{path}:{lineno}: column {column!r} holds non-numeric {t!r}") from None


def _label(text: str, path: Path, lineno: int) -> int:
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        raise DataError(f"{path}:{lineno}: label {t!r} is not a class number") from None
    if not value.is_integer() or value < 0:
        raise DataError(f"{path}:{lineno}: label {t!r} is not a non-negative integer class")
    return int(value)


def load_parquet(
    path: str | Path, label_column: str, feature_columns: list[str] | None = None
) -> Dataset:
    """Read a Parquet file; nulls become NaN (reported by validation, not fixed).

    Raises ``DataError`` naming the file and the problem: missing file or column, a
    non-numeric column, a non-integer label, a file that is not Parquet.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    features = _features(list(table.column_names), label_column, feature_columns, f"{path}", "")
    columns = []
    for name in features:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise DataError(f"{path}: column {name!r} holds {column.type}, not numbers")
        columns.append(column.to_numpy(zero_copy_only=False).astype(np.float32))
    label = table.column(label_column)
    if label.null_count or not (
        pa.types.is_integer(label.type) or pa.types.is_floating(label.type)
    ):
        raise DataError(f"{path}: label column {label_column!r} must be whole class numbers")
    y = label.to_numpy(zero_copy_only=False)
    if not np.all(np.mod(y, 1) == 0) or (y.size and y.min() < 0):
        raise DataError(f"{path}: labels must be non-negative integer classes")
    x = np.stack(columns, axis=1) if columns else np.zeros((len(y), 0), np.float32)
    return Dataset(x, y.astype(np.int64), tuple(features), path.name)


def load_table(
    path: str | Path, label_column: str, feature_columns: list[str] | None = None
) -> Dataset:
    """A CSV or Parquet file (by extension: .parquet or .pq, else CSV)."""
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        return load_parquet(path, label_column, feature_columns)
    return load_csv(path, label_column, feature_columns)


def table_columns(path: str | Path) -> list[str]:
    """The column names of a CSV's header row or a Parquet file's schema."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except FileNotFoundError:
            raise DataError(f"{path}: no such data file") from None
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if header is None:
        raise DataError(f"{path}: the file is empty (a header row is needed)")
    return [h.strip() for h in header]


def stratified_indices(
    labels: NDArray[np.int64], test_fraction: float, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Sorted (train, test) row indices; each class keeps its share in both parts."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
    test_idx: list[int] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        test_idx += idx[: round(len(idx) * test_fraction)].tolist()
    mask = np.zeros(len(labels), dtype=bool)
    mask[test_idx] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train_test_split(
    data: Dataset, test_fraction: float, rng: np.random.Generator
) -> tuple[Dataset, Dataset]:
    """A stratified split (each class keeps its share in both parts)."""
    train, test = stratified_indices(data.y, test_fraction, rng)
    return data.subset(train, f"{data.name}-train"), data.subset(test, f"{data.name}-test")


def dirichlet_split(
    labels: NDArray[np.int64], parts: int, alpha: float, rng: np.random.Generator, min_size: int = 2
) -> list[NDArray[np.int64]]:
    """Split row indices into ``parts`` with Dirichlet(α) label skew (Hsu et al. 2019).

    For each class, shares ``p ~ Dir(α·1)`` decide how its rows are dealt out; α = 0.1 is very
    skewed, 1.0 moderate, large α near IID. Redrawn until every part has ``min_size`` rows.
    """
    if parts < 1:
        raise DataError(f"cannot split into {parts} parts")
    if not alpha > 0:
        raise DataError(f"Dirichlet alpha must be positive, got {alpha}")
    if len(labels) < parts * min_size:
        raise DataError(f"{len(labels)} rows cannot give {parts} parts of ≥ {min_size} rows")
    for _ in range(1000):
        buckets: list[list[int]] = [[] for _ in range(parts)]
        for cls in np.unique(labels):
            idx = np.flatnonzero(labels == cls)
            rng.shuffle(idx)
            shares = rng.dirichlet(np.full(parts, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for part, chunk in enumerate(np.split(idx, cuts)):
                buckets[part] += chunk.tolist()
        if min(len(b) for b in buckets) >= min_size:
            return [np.sort(np.array(b, dtype=np.int64)) for b in buckets]
    raise DataError(f"no Dirichlet(α={alpha}) split gave every part ≥ {min_size} rows; raise α")
