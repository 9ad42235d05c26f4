"""Checking local data against the consortium's declared schema before joining.

Theory of operation: joining a consortium with data that does not match (columns in another
order, a different label coding, mostly missing values, a handful of patients, one class
only) silently poisons the shared model. So before a node joins, ``validate`` runs every
check, collects them all in a ``ValidationReport`` (never stopping at the first), and the
node refuses to join when any check fails. Thresholds are configured per institution; the
report is printed and saved as JSON next to the node's state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pfed.durable import write_json
from p2pfed.errors import ConfigError
from p2pfed.training.data import Dataset

FEATURE_TYPES = ("float", "int", "binary")


@dataclass(frozen=True)
class Schema:
    """What the consortium agreed every member's data looks like."""

    features: tuple[str, ...]
    labels: tuple[int, ...]
    types: tuple[str, ...] = ()
    """Per-feature type (float, int, binary); empty means all float."""
    label_distribution: tuple[float, ...] = ()
    """Expected share of each label (the reference for skew); empty means uniform."""

    def __post_init__(self) -> None:
        if not self.features:
            raise ConfigError("schema.features must list at least one feature")
        if len(set(self.features)) != len(self.features):
            raise ConfigError("schema.features lists a feature twice")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError("schema.labels must list at least two distinct classes")
        if self.types and len(self.types) != len(self.features):
            raise ConfigError(
                f"schema.types has {len(self.types)} entries for {len(self.features)} features"
            )
        bad = [t for t in self.types if t not in FEATURE_TYPES]
        if bad:
            raise ConfigError(f"schema.types entry {bad[0]!r} is not one of {FEATURE_TYPES}")
        dist = self.label_distribution
        if dist and (len(dist) != len(self.labels) or abs(sum(dist) - 1) > 1e-6 or min(dist) < 0):
            raise ConfigError(
                "schema.label_distribution must give one share per label, summing to 1"
            )

    def reference(self) -> np.ndarray:
        """Expected label shares, in ``labels`` order."""
        if self.label_distribution:
            return np.array(self.label_distribution)
        return np.full(len(self.labels), 1.0 / len(self.labels))


@dataclass(frozen=True)
class Thresholds:
    """Limits beyond which a node refuses to join."""

    min_samples: int = 30
    max_missing_fraction: float = 0.0
    """Per feature; 0 means any missing value fails (clean or impute locally first)."""
    max_label_skew: float = 0.45
    """Total-variation distance between local and reference label shares, in [0, 1]."""
    min_classes: int = 1

    def __post_init__(self) -> None:
        if self.min_samples < 1:
            raise ConfigError("validation.min_samples must be ≥ 1")
        if not 0 <= self.max_missing_fraction <= 1:
            raise ConfigError("validation.max_missing_fraction must be in [0, 1]")
        if not 0 <= self.max_label_skew <= 1:
            raise ConfigError("validation.max_label_skew must be in [0, 1]")
        if self.min_classes < 1:
            raise ConfigError("validation.min_classes must be ≥ 1")


@dataclass(frozen=True)
class Check:
    """One validation check and its outcome."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ValidationReport:
    """Every check's outcome plus the summary statistics they were based on."""

    data: str
    checks: tuple[Check, ...]
    samples: int
    label_counts: dict[int, int]
    missing_fraction: dict[str, float]
    label_skew: float

    @property
    def passed(self) -> bool:
        """Whether every check passed (the node may join)."""
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        """The failed checks."""
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["passed"] = self.passed
        out["label_counts"] = {str(k): v for k, v in self.label_counts.items()}
        return out

    def save(self, path: str | Path) -> None:
        """Write the report as JSON (atomically)."""
        write_json(path, self.to_dict())

    def summary(self) -> str:
        """One sentence: passed, or which checks failed and why."""
        if self.passed:
            return f"{self.data}: all {len(self.checks)} data checks passed"
        details = "; ".join(f"{c.name}: {c.detail}" for c in self.failures())
        return f"{self.data} failed data validation ({details})"


def validate(data: Dataset, schema: Schema, thresholds: Thresholds) -> ValidationReport:
    """Run every check of ``data`` against ``schema`` and ``thresholds``."""
    checks: list[Check] = []
    names_ok = data.feature_names == schema.features
    if names_ok:
        detail = f"{len(schema.features)} features as declared"
    elif set(data.feature_names) == set(schema.features):
        detail = "same features in a different order; reorder columns to the declared order"
    else:
        absent = [f for f in schema.features if f not in data.feature_names]
        extra = [f for f in data.feature_names if f not in schema.features]
        detail = f"missing {absent[:3]}, unexpected {extra[:3]}"
    checks.append(Check("schema", names_ok, detail))

    n = len(data)
    checks.append(
        Check(
            "min_samples",
            n >= thresholds.min_samples,
            f"{n} rows (need ≥ {thresholds.min_samples})",
        )
    )

    finite = np.isfinite(data.x)
    missing = {
        name: float(1.0 - finite[:, i].mean()) if n else 0.0
        for i, name in enumerate(data.feature_names)
    }
    worst = max(missing, key=lambda k: missing[k]) if missing else ""
    worst_frac = missing.get(worst, 0.0)
    checks.append(
        Check(
            "missing_values",
            worst_frac <= thresholds.max_missing_fraction,
            f"worst feature {worst!r} has {round(worst_frac * n)} of {n} values missing or "
            f"not finite ({worst_frac:.1%}; limit "
            f"{thresholds.max_missing_fraction:.1%})",
        )
    )

    if names_ok and schema.types:
        bad_type = []
        for i, kind in enumerate(schema.types):
            col = data.x[finite[:, i], i]
            if kind == "int" and not np.all(np.mod(col, 1) == 0):
                bad_type.append(f"{schema.features[i]} (int)")
            elif kind == "binary" and not np.all(np.isin(col, (0.0, 1.0))):
                bad_type.append(f"{schema.features[i]} (binary)")
        checks.append(
            Check(
                "types",
                not bad_type,
                "all features match their declared types"
                if not bad_type
                else f"values off their declared type in {', '.join(bad_type[:3])}",
            )
        )

    labels, counts = np.unique(data.y, return_counts=True)
    label_counts = {int(k): int(v) for k, v in zip(labels, counts, strict=True)}
    unknown = sorted(set(label_counts) - set(schema.labels))
    checks.append(
        Check(
            "label_set",
            not unknown,
            f"labels {sorted(label_counts)} within {list(schema.labels)}"
            if not unknown
            else f"labels {unknown} are not declared by the consortium",
        )
    )
    present = len(set(label_counts) & set(schema.labels))
    checks.append(
        Check(
            "classes_present",
            present >= thresholds.min_classes,
            f"{present} of {len(schema.labels)} classes present (need ≥ {thresholds.min_classes})",
        )
    )

    local = np.array([label_counts.get(lbl, 0) for lbl in schema.labels], dtype=float)
    local = local / local.sum() if local.sum() else local
    skew = float(0.5 * np.abs(local - schema.reference()).sum())
    checks.append(
        Check(
            "label_skew",
            skew <= thresholds.max_label_skew,
            f"total-variation distance {skew:.3f} from the reference "
            f"(limit {thresholds.max_label_skew:.3f})",
        )
    )
    return ValidationReport(
        data=data.name,
        checks=tuple(checks),
        samples=n,
        label_counts=label_counts,
        missing_fraction=missing,
        label_skew=skew,
    )
