"""Drift monitoring: falling validation metrics and shifting input data, as alerts.

Theory of operation: the daemon owns one ``DriftMonitor`` per node and calls it once a
round. Two kinds of drift are watched:

*Metric drift* — after each round the node evaluates the new shared model on its local
validation split and passes the metrics in (``observe_metrics``). For each ``MetricRule``
the monitor compares the value with the best of the previous ``window`` rounds and raises
an alert when it fell by more than ``max_drop`` (for loss-like metrics, rose by more).
Comparing against the recent *best* rather than the last value catches slow slides that
never drop much in one step.

*Input drift* — the monitor keeps a summary of the data the node joined with (quantile
bin edges and bin shares per feature, label shares; never the rows) and compares the
current data with it (``check_inputs``) using the population stability index::

    PSI = Σ_b (c_b − r_b) · ln(c_b / r_b)

over bins ``b`` fixed by the reference's quantiles, where ``r_b`` and ``c_b`` are the
reference and current shares, smoothed by ``epsilon`` so empty bins stay finite. The
conventional reading (credit-scoring practice, Siddiqi 2006; Yurdakul 2018) is PSI < 0.1
stable, 0.1–0.2 moderate, > 0.2 a major shift; both cut-offs are configurable. Labels get
the same PSI over classes, plus the total-variation distance for readability.

Alerts are edge-triggered: a condition alerts when it becomes true and again only after it
has cleared, so a lasting shift does not write the same alert to the audit log every round.
``state_dict`` / ``from_state`` persist the reference summary and recent history so a
restarted daemon still compares with the data at join time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from p2pfed.errors import ConfigError, DataError
from p2pfed.governance.stats import (
    bin_shares,
    label_shares,
    noise_floor,
    psi_from_shares,
    quantile_edges,
    total_variation,
)

STATE_FORMAT = "p2pfed-drift-state/1"


class Samples(Protocol):
    """Rows drift is measured on; ``p2pfed.training.Dataset`` is one (governance needs no more)."""

    @property
    def x(self) -> NDArray[np.floating[Any]]:
        """Features, one row per sample."""

    @property
    def y(self) -> NDArray[np.integer[Any]]:
        """Class labels."""

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the feature columns."""

    @property
    def name(self) -> str:
        """What the data is called in messages."""

    def __len__(self) -> int:
        """Number of rows."""


class DriftKind(enum.StrEnum):
    """What drifted."""

    METRIC_DROP = "metric-drop"
    FEATURE_SHIFT = "feature-shift"
    LABEL_SHIFT = "label-shift"


class Severity(enum.StrEnum):
    """How bad: ``warning`` past the moderate cut-off, ``major`` past the major one."""

    WARNING = "warning"
    MAJOR = "major"


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """One alert, for ``p2pfed status``, the log and the audit log (``to_dict``)."""

    round: int
    kind: DriftKind
    subject: str
    """The metric, feature, or ``labels``."""
    value: float
    """The drop (metric drift) or the PSI (input drift)."""
    threshold: float
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also the body of an audit ``drift_alert`` entry, minus the round)."""
        return {
            "kind": self.kind.value,
            "subject": self.subject,
            "value": round(self.value, 6),
            "threshold": self.threshold,
            "severity": self.severity.value,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class MetricRule:
    """Alert when ``metric`` worsens by more than ``max_drop`` versus the best of ``window``."""

    metric: str
    max_drop: float
    window: int = 5
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not self.metric:
            raise ConfigError("drift.metrics: a rule needs a metric name")
        if not (self.max_drop > 0 and math.isfinite(self.max_drop)):
            raise ConfigError(f"drift.metrics.{self.metric}.max_drop must be a positive number")
        if self.window < 1:
            raise ConfigError(f"drift.metrics.{self.metric}.window must be ≥ 1")


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Thresholds for drift alerts; the defaults follow common practice."""

    rules: tuple[MetricRule, ...] = (MetricRule("accuracy", 0.05),)
    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    psi_warning: float = 0.1
    psi_major: float = 0.2
    label_psi_major: float = 0.2
    min_samples: int = 50
    """Below this many current rows inputs are not checked at all."""
    significance: float | None = 0.01
    """Also require PSI above what sampling noise alone reaches with this probability
    (over all features together); ``None`` uses the plain cut-offs."""

    def __post_init__(self) -> None:
        checks = [
            (2 <= self.psi_bins <= 100, "drift.psi_bins must be between 2 and 100"),
            (0 < self.psi_epsilon < 0.01, "drift.psi_epsilon must be in (0, 0.01)"),
            (0 < self.psi_warning <= self.psi_major, "drift needs 0 < psi_warning ≤ psi_major"),
            (self.label_psi_major > 0, "drift.label_psi_major must be positive"),
            (self.min_samples >= 1, "drift.min_samples must be ≥ 1"),
            (
                self.significance is None or 0 < self.significance < 1,
                "drift.significance must be in (0, 1) or null",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        names = [r.metric for r in self.rules]
        if len(set(names)) != len(names):
            raise ConfigError("drift.metrics lists a metric twice")


# --- the monitor --------------------------------------------------------------------------


@dataclass(frozen=True)
class InputDriftReport:
    """Every feature's PSI and the label shift from the last ``check_inputs``."""

    round: int
    samples: int
    feature_psi: Mapping[str, float]
    label_psi: float
    label_tv: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for ``p2pfed status``)."""
        return {
            "round": self.round,
            "samples": self.samples,
            "feature_psi": {k: round(v, 6) for k, v in self.feature_psi.items()},
            "label_psi": round(self.label_psi, 6),
            "label_tv": round(self.label_tv, 6),
        }


@dataclass
class _Reference:
    features: tuple[str, ...]
    edges: list[NDArray[np.float64]]
    shares: list[NDArray[np.float64]]
    labels: NDArray[np.float64]
    samples: int


class DriftMonitor:
    """Per-node drift state; the daemon calls it each round and acts on the alerts.

    ``DriftMonitor(config, classes=k)``, then ``set_reference(data)`` once at join time;
    each round ``observe(round, metrics, data)`` (or the two halves separately).
    """

    def __init__(self, config: DriftConfig, classes: int) -> None:
        if classes < 2:
            raise ConfigError("drift monitoring needs at least two classes")
        self.config = config
        self.classes = classes
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.active: dict[tuple[str, str], Severity] = {}
        """Conditions alerting now (kind, subject) → severity: repeats only after clearing."""
        self.last_inputs: InputDriftReport | None = None
        self._reference: _Reference | None = None

    # -- reference --------------------------------------------------------------------------

    def set_reference(self, data: Samples) -> None:
        """Summarise the data the node joined with (bin edges and shares; no rows kept)."""
        _check_finite(data)
        if len(data) < self.config.min_samples:
            raise DataError(
                f"{data.name}: {len(data)} rows are too few for a drift reference "
                f"(drift.min_samples is {self.config.min_samples})"
            )
        edges = [quantile_edges(data.x[:, j], self.config.psi_bins) for j in range(data.x.shape[1])]
        shares = [bin_shares(data.x[:, j], e) for j, e in enumerate(edges)]
        self._reference = _Reference(
            data.feature_names, edges, shares, label_shares(data.y, self.classes), len(data)
        )

    @property
    def has_reference(self) -> bool:
        """Whether ``set_reference`` (or a restored state) gave a join-time summary."""
        return self._reference is not None

    # -- per round --------------------------------------------------------------------------

    def observe(
        self, round_number: int, metrics: Mapping[str, float], data: Samples | None = None
    ) -> list[DriftAlert]:
        """Both checks for one round; ``data`` is the node's current data, if re-read."""
        alerts = self.observe_metrics(round_number, metrics)
        if data is not None:
            alerts += self.check_inputs(round_number, data)
        return alerts

    def observe_metrics(self, round_number: int, metrics: Mapping[str, float]) -> list[DriftAlert]:
        """Record this round's validation metrics; alerts for rules that newly fire."""
        alerts: list[DriftAlert] = []
        for rule in self.config.rules:
            if rule.metric not in metrics:
                continue
            value = float(metrics[rule.metric])
            if not math.isfinite(value):
                raise DataError(f"validation metric {rule.metric} is {value}; it must be finite")
            past = self.history.setdefault(rule.metric, [])
            if past and past[-1][0] >= round_number:
                raise DataError(f"metrics for round {round_number} came after round {past[-1][0]}")
            window = [v for _, v in past[-rule.window :]]
            past.append((round_number, value))
            del past[: -max(r.window for r in self.config.rules) - 1]
            if not window:
                continue
            best = max(window) if rule.higher_is_better else min(window)
            drop = best - value if rule.higher_is_better else value - best
            fired = drop > rule.max_drop
            word = "fell" if rule.higher_is_better else "rose"
            alerts += self._edge(
                fired,
                DriftAlert(
                    round_number,
                    DriftKind.METRIC_DROP,
                    rule.metric,
                    drop,
                    rule.max_drop,
                    Severity.MAJOR,
                    f"{rule.metric} {word} to {value:.4g}, {drop:.4g} worse than the best "
                    f"({best:.4g}) of the last {len(window)} round(s); limit {rule.max_drop}",
                ),
            )
        return alerts

    def check_inputs(self, round_number: int, data: Samples) -> list[DriftAlert]:
        """Compare ``data`` with the join-time reference; alerts for newly shifted inputs."""
        ref = self._reference
        if ref is None:
            raise ConfigError("drift: set_reference must be called before check_inputs")
        if data.feature_names != ref.features:
            raise DataError(
                f"{data.name}: its features are not the ones the drift reference was built on"
            )
        _check_finite(data)
        cfg = self.config
        if len(data) < cfg.min_samples:
            return []
        feature_psi = {
            name: psi_from_shares(shares, bin_shares(data.x[:, j], edges), cfg.psi_epsilon)
            for j, (name, edges, shares) in enumerate(
                zip(ref.features, ref.edges, ref.shares, strict=True)
            )
        }
        current_labels = label_shares(data.y, self.classes)
        label_psi = psi_from_shares(ref.labels, current_labels, cfg.psi_epsilon)
        label_tv = total_variation(ref.labels, current_labels)
        self.last_inputs = InputDriftReport(
            round_number, len(data), feature_psi, label_psi, label_tv
        )
        alerts: list[DriftAlert] = []
        floors = self._floors(len(data))
        for (name, value), floor in zip(feature_psi.items(), floors, strict=False):
            major, warning = max(cfg.psi_major, floor), max(cfg.psi_warning, floor)
            severity = (
                Severity.MAJOR if value > major else Severity.WARNING if value > warning else None
            )
            threshold = round(major if severity == Severity.MAJOR else warning, 6)
            alerts += self._edge(
                severity is not None,
                DriftAlert(
                    round_number,
                    DriftKind.FEATURE_SHIFT,
                    name,
                    value,
                    threshold,
                    severity or Severity.WARNING,
                    f"feature {name} shifted since join: PSI {value:.3f} > {threshold}",
                ),
            )
        label_limit = round(max(cfg.label_psi_major, floors[-1]), 6)
        alerts += self._edge(
            label_psi > label_limit,
            DriftAlert(
                round_number,
                DriftKind.LABEL_SHIFT,
                "labels",
                label_psi,
                label_limit,
                Severity.MAJOR,
                f"label distribution shifted since join: PSI {label_psi:.3f} > "
                f"{label_limit} (total variation {label_tv:.3f})",
            ),
        )
        return alerts

    def _floors(self, n_cur: int) -> list[float]:
        """Noise floors per feature and, last, for the labels (0 when disabled)."""
        ref, alpha = self._reference, self.config.significance
        assert ref is not None
        shares = [*ref.shares, ref.labels]
        if alpha is None:
            return [0.0] * len(shares)
        # Bonferroni over features and labels: the chance of any false alert is ≤ alpha.
        per_test = alpha / len(shares)
        return [noise_floor(s, ref.samples, n_cur, per_test) for s in shares]

    def _edge(self, fired: bool, alert: DriftAlert) -> list[DriftAlert]:
        # Alert on entering a condition or on escalating from warning to major; stay
        # quiet while it persists, and re-arm once it clears.
        key = (alert.kind.value, alert.subject)
        if not fired:
            self.active.pop(key, None)
            return []
        before = self.active.get(key)
        if before == Severity.MAJOR or before == alert.severity:
            return []
        self.active[key] = alert.severity
        return [alert]

    # -- status and persistence ----------------------------------------------------------

    def status(self, top: int = 5) -> dict[str, Any]:
        """What ``p2pfed status`` shows: active conditions, latest metrics, top PSIs."""
        latest = {name: past[-1][1] for name, past in self.history.items() if past}
        out: dict[str, Any] = {
            "active": sorted(f"{k}:{s} ({v.value})" for (k, s), v in self.active.items()),
            "latest_metrics": latest,
            "reference_samples": self._reference.samples if self._reference else None,
        }
        if self.last_inputs is not None:
            worst = sorted(self.last_inputs.feature_psi.items(), key=lambda kv: -kv[1])[:top]
            out["inputs"] = {
                "round": self.last_inputs.round,
                "top_feature_psi": {k: round(v, 4) for k, v in worst},
                "label_psi": round(self.last_inputs.label_psi, 4),
                "label_tv": round(self.last_inputs.label_tv, 4),
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (reference summary, metric history, active alerts)."""
        ref = self._reference
        return {
            "format": STATE_FORMAT,
            "classes": self.classes,
            "history": {k: [[r, v] for r, v in past] for k, past in self.history.items()},
            "active": sorted([k, s, v.value] for (k, s), v in self.active.items()),
            "reference": None
            if ref is None
            else {
                "features": list(ref.features),
                "edges": [e.tolist() for e in ref.edges],
                "shares": [s.tolist() for s in ref.shares],
                "labels": ref.labels.tolist(),
                "samples": ref.samples,
            },
        }

    @classmethod
    def from_state(cls, config: DriftConfig, state: Mapping[str, Any]) -> DriftMonitor:
        """Restore a monitor saved by ``state_dict``; ``DataError`` if it is malformed."""
        try:
            if state["format"] != STATE_FORMAT:
                raise ValueError(f"format {state['format']!r} is not {STATE_FORMAT!r}")
            monitor = cls(config, int(state["classes"]))
            monitor.history = {
                str(k): [(int(r), float(v)) for r, v in past]
                for k, past in state["history"].items()
            }
            monitor.active = {(str(k), str(s)): Severity(v) for k, s, v in state["active"]}
            ref = state["reference"]
            if ref is not None:
                monitor._reference = _Reference(
                    tuple(str(f) for f in ref["features"]),
                    [np.asarray(e, np.float64) for e in ref["edges"]],
                    [np.asarray(s, np.float64) for s in ref["shares"]],
                    np.asarray(ref["labels"], np.float64),
                    int(ref["samples"]),
                )
                if len(monitor._reference.labels) != monitor.classes:
                    raise ValueError("label shares do not match the number of classes")
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"drift state is malformed: {exc}") from None
        return monitor


def _check_finite(data: Samples) -> None:
    if not np.all(np.isfinite(data.x)):
        raise DataError(f"{data.name}: features hold NaN or infinite values; clean them first")


def metric_rules(spec: Mapping[str, float], window: int = 5) -> tuple[MetricRule, ...]:
    """Rules from a config mapping such as ``{"accuracy": 0.05, "loss": 0.2}``.

    Metrics named ``loss`` or ending in ``_loss`` are treated as lower-is-better.
    """
    return tuple(
        MetricRule(name, float(drop), window, not (name == "loss" or name.endswith("_loss")))
        for name, drop in spec.items()
    )


def describe(alerts: Sequence[DriftAlert]) -> list[str]:
    """One line per alert, for logs and the console."""
    return [f"round {a.round}: {a.severity.value} {a.kind.value}: {a.message}" for a in alerts]
