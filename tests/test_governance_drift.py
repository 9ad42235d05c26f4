import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError, DataError
from p2pfed.governance.drift import (
    DriftConfig,
    DriftKind,
    DriftMonitor,
    MetricRule,
    Severity,
    metric_rules,
)
from p2pfed.governance.stats import noise_floor, psi, psi_from_shares, total_variation
from p2pfed.training import Dataset, load_builtin

FEATURES = ("age", "bmi", "glucose", "bp", "smoker")


def synthetic(n, seed, shift=None, positive_rate=0.5):
    """Five features (four Gaussian, one binary) and binary labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    x[:, 4] = (rng.random(n) < 0.3).astype(np.float32)
    for column, delta in (shift or {}).items():
        x[:, column] += delta
    y = (rng.random(n) < positive_rate).astype(np.int64)
    return Dataset(x, y, FEATURES, f"synthetic-{seed}")


def monitor(**cfg):
    m = DriftMonitor(DriftConfig(**cfg), classes=2)
    m.set_reference(synthetic(2000, seed=0))
    return m


def test_resample_of_the_same_distribution_raises_no_alert():
    m = monitor()
    for r, seed in enumerate(range(1, 6), start=1):
        assert m.check_inputs(r, synthetic(2000, seed)) == []
    assert max(m.last_inputs.feature_psi.values()) < 0.05


def test_shifted_feature_raises_a_major_alert_naming_it():
    m = monitor()
    alerts = m.check_inputs(1, synthetic(2000, seed=1, shift={1: 1.0}))
    assert [(a.kind, a.subject, a.severity) for a in alerts] == [
        (DriftKind.FEATURE_SHIFT, "bmi", Severity.MAJOR)
    ]
    assert alerts[0].value > 0.2 and "PSI" in alerts[0].message


def test_moderate_shift_is_a_warning_then_escalates():
    m = monitor()
    (warn,) = m.check_inputs(1, synthetic(2000, seed=1, shift={2: 0.45}))
    assert warn.severity == Severity.WARNING and warn.subject == "glucose"
    assert 0.1 < warn.value <= 0.2
    (major,) = m.check_inputs(2, synthetic(2000, seed=2, shift={2: 1.0}))
    assert major.severity == Severity.MAJOR


def test_binary_feature_and_label_shift():
    m = monitor()
    data = synthetic(2000, seed=1, positive_rate=0.85)
    smoker = data.x[:, 4]
    data.x[:, 4] = np.where(np.arange(len(smoker)) % 2 == 0, 1.0, smoker)
    alerts = m.check_inputs(1, data)
    kinds = {(a.kind, a.subject) for a in alerts}
    assert kinds == {(DriftKind.FEATURE_SHIFT, "smoker"), (DriftKind.LABEL_SHIFT, "labels")}
    label = next(a for a in alerts if a.kind == DriftKind.LABEL_SHIFT)
    assert "total variation 0.3" in label.message
    assert m.last_inputs.label_tv == pytest.approx(0.35, abs=0.03)


def test_alerts_are_edge_triggered_and_rearm():
    m = monitor()
    shifted = synthetic(2000, seed=1, shift={0: 1.0})
    assert len(m.check_inputs(1, shifted)) == 1
    assert m.check_inputs(2, shifted) == []  # still shifted: no repeat
    assert m.status()["active"] == ["feature-shift:age (major)"]
    assert m.check_inputs(3, synthetic(2000, seed=2)) == []  # cleared
    assert m.status()["active"] == []
    assert len(m.check_inputs(4, shifted)) == 1  # shifted again: alerts again


def test_real_clinical_data_split_is_stable_but_a_subpopulation_is_not():
    data = load_builtin("breast_cancer")
    idx = np.random.default_rng(0).permutation(len(data))
    m = DriftMonitor(DriftConfig(), classes=2)
    m.set_reference(data.subset(idx[:285]))
    assert m.check_inputs(1, data.subset(idx[285:])) == []
    larger_tumours = data.subset(np.where(data.x[:, 0] > np.median(data.x[:, 0]))[0])
    alerts = m.check_inputs(2, larger_tumours)
    subjects = {a.subject for a in alerts}
    assert {"mean radius", "mean area", "labels"} <= subjects


def test_small_samples_raise_the_bar_and_plain_cutoffs_do_not():
    # With ~285 rows per side, conventional cut-offs alone flag features by chance.
    data = load_builtin("breast_cancer")
    idx = np.random.default_rng(0).permutation(len(data))
    plain = DriftMonitor(DriftConfig(significance=None), classes=2)
    plain.set_reference(data.subset(idx[:285]))
    assert plain.check_inputs(1, data.subset(idx[285:])) != []
    floor = noise_floor(np.full(10, 0.1), 285, 284, 0.01 / 31)
    assert 0.15 < floor < 0.3
    assert noise_floor(np.full(10, 0.1), 100_000, 100_000, 0.01) < 0.001


def test_metric_drop_against_best_of_window():
    m = DriftMonitor(DriftConfig(rules=(MetricRule("accuracy", 0.05, window=3),)), classes=2)
    assert m.observe_metrics(1, {"accuracy": 0.80}) == []
    assert m.observe_metrics(2, {"accuracy": 0.84}) == []
    assert m.observe_metrics(3, {"accuracy": 0.81}) == []
    (alert,) = m.observe_metrics(4, {"accuracy": 0.78})
    assert alert.kind == DriftKind.METRIC_DROP and alert.value == pytest.approx(0.06)
    assert "best (0.84)" in alert.message
    assert m.observe_metrics(5, {"accuracy": 0.775}) == []  # same condition, no repeat
    # Once the good rounds leave the window the condition clears and re-arms.
    assert m.observe_metrics(6, {"accuracy": 0.78}) == []
    assert m.observe_metrics(7, {"accuracy": 0.78}) == []
    assert m.status()["active"] == []


def test_slow_slide_is_caught_and_noise_is_not():
    m = DriftMonitor(DriftConfig(), classes=2)
    values = [0.85, 0.84, 0.83, 0.82, 0.81, 0.79]
    alerts = [a for r, v in enumerate(values, 1) for a in m.observe_metrics(r, {"accuracy": v})]
    assert [a.round for a in alerts] == [6]
    quiet = DriftMonitor(DriftConfig(), classes=2)
    rng = np.random.default_rng(3)
    for r in range(1, 40):
        assert quiet.observe_metrics(r, {"accuracy": 0.8 + rng.uniform(-0.02, 0.02)}) == []


def test_loss_rule_is_lower_is_better():
    rules = metric_rules({"accuracy": 0.05, "val_loss": 0.1})
    assert rules[1].higher_is_better is False
    m = DriftMonitor(DriftConfig(rules=rules), classes=2)
    m.observe(1, {"accuracy": 0.9, "val_loss": 0.30})
    m.observe(2, {"accuracy": 0.9, "val_loss": 0.25})
    (alert,) = m.observe(3, {"accuracy": 0.9, "val_loss": 0.40})
    assert alert.subject == "val_loss" and "rose" in alert.message


def test_state_round_trip_keeps_reference_and_active_alerts():
    m = monitor()
    m.observe(1, {"accuracy": 0.9}, synthetic(2000, 1, shift={3: 1.0}))
    state = json.loads(json.dumps(m.state_dict()))
    again = DriftMonitor.from_state(m.config, state)
    assert again.has_reference and again.active == m.active
    assert again.check_inputs(2, synthetic(2000, 2, shift={3: 1.0})) == []
    (alert,) = again.observe_metrics(2, {"accuracy": 0.8})
    assert alert.subject == "accuracy"
    with pytest.raises(DataError, match="drift state is malformed"):
        DriftMonitor.from_state(m.config, {**state, "format": "x"})


def test_errors_are_clear():
    m = DriftMonitor(DriftConfig(), classes=2)
    with pytest.raises(ConfigError, match="set_reference"):
        m.check_inputs(1, synthetic(100, 1))
    with pytest.raises(DataError, match="too few"):
        m.set_reference(synthetic(10, 1))
    m.set_reference(synthetic(500, 1))
    other = Dataset(np.zeros((60, 2), np.float32), np.zeros(60, np.int64), ("a", "b"), "other")
    with pytest.raises(DataError, match="not the ones the drift reference"):
        m.check_inputs(1, other)
    bad = synthetic(100, 2)
    bad.x[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        m.check_inputs(1, bad)
    with pytest.raises(DataError, match="must be finite"):
        m.observe_metrics(1, {"accuracy": float("nan")})
    m.observe_metrics(3, {"accuracy": 0.5})
    with pytest.raises(DataError, match="came after round 3"):
        m.observe_metrics(2, {"accuracy": 0.5})
    with pytest.raises(ConfigError, match="psi_warning"):
        DriftConfig(psi_warning=0.3, psi_major=0.2)
    with pytest.raises(ConfigError, match="max_drop"):
        MetricRule("accuracy", -1)
    assert m.check_inputs(4, synthetic(20, 3)) == []  # under min_samples: not checked


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=5, max_size=200),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=200),
)
def test_psi_is_non_negative_and_zero_on_itself(ref, cur):
    a, b = np.array(ref), np.array(cur)
    assert psi(a, b) >= -1e-12
    assert psi(a, a) == pytest.approx(0.0, abs=1e-12)


def test_psi_and_tv_known_values():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert psi_from_shares(p, q, epsilon=1e-12) == pytest.approx(expected, rel=1e-6)
    assert total_variation(p, q) == pytest.approx(0.4)


def write_csv(path, data):
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*data.feature_names, "label"])
        for row, label in zip(data.x, data.y, strict=True):
            w.writerow([*map(float, row), int(label)])
    return path


def test_drift_cli(tmp_path, capsys):
    from p2pfed.cli import main

    ref = write_csv(tmp_path / "ref.csv", synthetic(1000, 0))
    same = write_csv(tmp_path / "same.csv", synthetic(1000, 1))
    moved = write_csv(tmp_path / "moved.csv", synthetic(1000, 2, shift={3: 1.0}))
    assert main(["drift", "check", str(ref), str(same)]) == 0
    assert "no drift beyond the thresholds" in capsys.readouterr().out
    assert main(["drift", "check", str(ref), str(moved), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [a["subject"] for a in doc["alerts"]] == ["bp"] and doc["feature_psi"]["bp"] > 0.2
    assert main(["drift", "check", str(ref), str(tmp_path / "none.csv")]) == 2
    assert "no such data file" in capsys.readouterr().err
    small = write_csv(tmp_path / "small.csv", synthetic(10, 3))
    assert main(["drift", "check", str(ref), str(small)]) == 2
    assert "fewer than the 50" in capsys.readouterr().err
