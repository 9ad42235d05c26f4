import json
from pathlib import Path

import numpy as np
import pytest

from p2pfed.errors import ConfigError
from p2pfed.training import Dataset
from p2pfed.training.validation import Schema, Thresholds, validate

SCHEMA = Schema(features=("age", "bp", "smoker"), labels=(0, 1), types=("int", "float", "binary"))


def make(n: int = 100, p_pos: float = 0.5, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.integers(20, 90, n), rng.normal(120, 10, n), rng.integers(0, 2, n)])
    y = (rng.random(n) < p_pos).astype(np.int64)
    return Dataset(x.astype(np.float32), y, SCHEMA.features, "site")


def test_clean_data_passes(tmp_path: Path) -> None:
    report = validate(make(), SCHEMA, Thresholds())
    assert report.passed, report.summary()
    report.save(tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["passed"] is True and saved["samples"] == 100


def failed(
    data: Dataset, thresholds: Thresholds | None = None, schema: Schema = SCHEMA
) -> set[str]:
    report = validate(data, schema, thresholds or Thresholds())
    assert not report.passed
    assert "failed data validation" in report.summary()
    return {c.name for c in report.failures()}


def test_each_problem_is_caught() -> None:
    d = make()
    renamed = Dataset(d.x, d.y, ("age", "pressure", "smoker"), "site")
    assert failed(renamed) == {"schema"}
    reordered = Dataset(d.x[:, [1, 0, 2]], d.y, ("bp", "age", "smoker"), "site")
    assert "schema" in failed(reordered)
    assert failed(make(n=10)) == {"min_samples"}
    holes = d.x.copy()
    holes[:5, 1] = np.nan
    assert failed(Dataset(holes, d.y, d.feature_names, "site")) == {"missing_values"}
    assert validate(
        Dataset(holes, d.y, d.feature_names, "s"), SCHEMA, Thresholds(max_missing_fraction=0.1)
    ).passed
    wrong_type = d.x.copy()
    wrong_type[0, 2] = 0.5
    assert failed(Dataset(wrong_type, d.y, d.feature_names, "site")) == {"types"}
    bad_labels = d.y.copy()
    bad_labels[0] = 7
    assert failed(Dataset(d.x, bad_labels, d.feature_names, "site")) == {"label_set"}
    assert failed(make(p_pos=0.995)) == {"label_skew"}
    assert "classes_present" in failed(
        make(p_pos=1.0), Thresholds(min_classes=2, max_label_skew=1.0)
    )


def test_schema_and_threshold_errors() -> None:
    with pytest.raises(ConfigError, match="twice"):
        Schema(features=("a", "a"), labels=(0, 1))
    with pytest.raises(ConfigError, match="two distinct"):
        Schema(features=("a",), labels=(0,))
    with pytest.raises(ConfigError, match="not one of"):
        Schema(features=("a",), labels=(0, 1), types=("text",))
    with pytest.raises(ConfigError, match="summing to 1"):
        Schema(features=("a",), labels=(0, 1), label_distribution=(0.5, 0.6))
    with pytest.raises(ConfigError, match="max_label_skew"):
        Thresholds(max_label_skew=2)
