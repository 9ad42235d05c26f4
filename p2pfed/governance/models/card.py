"""What a clinician's team needs to use an exported model: architecture and preprocessing.

Theory of operation: a model version's weights alone cannot be used: one must know the
architecture to rebuild, which named column feeds which input, and the centre and scale
the daemon subtracted and divided by before training. ``ModelCard`` carries these into an
exported manifest's ``export`` block (``model export --config``); ``ModelCard.inputs``
turns rows given by column *name* into the exact matrix the daemon trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import DataError, IntegrityError

NORMALISATION_SOURCES = ("agreed", "local")
"""``agreed``: the schema's constants, the same at every member; ``local``: this node's
own training-split mean and standard deviation (other members used their own)."""


@dataclass(frozen=True)
class ModelCard:
    """Architecture, input columns in order, labels and normalisation of a model."""

    kind: str
    hidden: tuple[int, ...]
    seed: int
    n_classes: int
    features: tuple[str, ...]
    labels: tuple[int, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    normalisation: str
    configured_rounds: int
    privacy_mode: str

    def __post_init__(self) -> None:
        n = len(self.features)
        if n < 1 or len(set(self.features)) != n:
            raise IntegrityError("a model card needs one or more distinct feature names")
        if len(self.center) != n or len(self.scale) != n:
            raise IntegrityError(
                f"a model card needs one centre and one scale per feature ({n}), "
                f"got {len(self.center)} and {len(self.scale)}"
            )
        if not all(math.isfinite(c) for c in self.center) or not all(
            math.isfinite(s) and s > 0 for s in self.scale
        ):
            raise IntegrityError("a model card's centres must be finite and its scales positive")
        if self.normalisation not in NORMALISATION_SOURCES:
            raise IntegrityError(
                f"normalisation {self.normalisation!r} is not one of {NORMALISATION_SOURCES}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as it appears in an exported manifest's ``export`` block."""
        return {
            "architecture": {
                "kind": self.kind,
                "hidden": list(self.hidden),
                "seed": self.seed,
                "n_features": len(self.features),
                "n_classes": self.n_classes,
            },
            "features": list(self.features),
            "labels": list(self.labels),
            "normalisation": {
                "source": self.normalisation,
                "center": list(self.center),
                "scale": list(self.scale),
                "applied": "(x - center) / scale, per feature, in float32",
            },
            "configured_rounds": self.configured_rounds,
            "privacy_mode": self.privacy_mode,
        }

    @classmethod
    def from_export(cls, export: Mapping[str, Any], source: str) -> ModelCard:
        """The card in an exported manifest's ``export`` block; ``IntegrityError`` if absent."""
        if "architecture" not in export:
            raise IntegrityError(
                f"{source} has no model card (architecture, features, normalisation): "
                "export it again with `p2pfed model export --config FILE`"
            )
        try:
            arch, norm = export["architecture"], export["normalisation"]
            return cls(
                kind=str(arch["kind"]),
                hidden=tuple(int(h) for h in arch["hidden"]),
                seed=int(arch["seed"]),
                n_classes=int(arch["n_classes"]),
                features=tuple(str(f) for f in export["features"]),
                labels=tuple(int(v) for v in export["labels"]),
                center=tuple(float(c) for c in norm["center"]),
                scale=tuple(float(s) for s in norm["scale"]),
                normalisation=str(norm["source"]),
                configured_rounds=int(export["configured_rounds"]),
                privacy_mode=str(export["privacy_mode"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise IntegrityError(f"model card in {source} is malformed: {detail}") from None

    def inputs(self, rows: Any) -> NDArray[np.float32]:
        """The normalised input matrix for ``rows``: a DataFrame or a column → values mapping.

        Columns are taken by name in the card's order (extra columns are ignored), so a
        table with its columns in another order gives the same inputs.
        """
        columns = []
        for name in self.features:
            try:
                values = rows[name]
            except (KeyError, IndexError, TypeError):
                raise DataError(
                    f"the rows have no column {name!r}; the model needs {list(self.features)}"
                ) from None
            try:
                column = np.asarray(values, dtype=np.float32).reshape(-1)
            except (TypeError, ValueError):
                raise DataError(f"column {name!r} holds values that are not numbers") from None
            if not np.isfinite(column).all():
                raise DataError(f"column {name!r} has missing or infinite values")
            columns.append(column)
        if len({len(c) for c in columns}) != 1:
            raise DataError("the columns have different lengths")
        x = np.stack(columns, axis=1)
        center = np.asarray(self.center, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        return ((x - center) / scale).astype(np.float32)
