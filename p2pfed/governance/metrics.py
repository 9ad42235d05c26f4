"""Prometheus metrics for one node, on its own registry, served only when enabled.

Theory of operation: ``NodeMetrics`` owns a private ``CollectorRegistry`` (never the
process-global one), so two nodes in one process, or many tests, never collide; the daemon
calls its small methods as things happen (a round ended, bytes moved, ε spent, a peer was
excluded). Nothing is exposed unless the operator enables ``MetricsConfig``: then
``MetricsServer`` serves ``/metrics`` and, given the node's state folder, the dashboard at
``/`` (``governance.dashboard``) from a background thread (``governance.web``: read-only),
on 127.0.0.1 unless another address is configured. Metrics and the dashboard reveal
participation and privacy spend, which are not public: off loopback a token file is
required. ``render`` gives the text exposition without a server, for ``p2pfed status``.

Metrics (all prefixed ``p2pfed_``): ``rounds_total{outcome}``, ``round_duration_seconds``
(histogram), ``current_round``, ``bytes_sent_total``, ``bytes_received_total``,
``privacy_epsilon_spent``, ``privacy_epsilon_budget``, ``peers_connected``,
``exclusions_total{reason}`` (pre-created for every ``ReasonCode`` so dashboards see zeros;
refused messages count one each), ``drift_alerts_total{kind}``, ``roster_expiry_seconds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from p2pfed.errors import ConfigError, LocalError, ReasonCode
from p2pfed.governance.dashboard import render_page
from p2pfed.governance.dashboard_data import collect
from p2pfed.governance.web import ReadOnlyServer, Route, is_loopback, read_token

ROUND_OUTCOMES = ("completed", "failed", "aborted")
DRIFT_KINDS = ("metric-drop", "feature-shift", "label-shift")
# Rounds last from under a second (small models on a LAN) to many minutes (large models
# over WAN with secure aggregation), so the buckets span that range roughly geometrically.
ROUND_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, math.inf)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Whether and where to serve metrics; off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464
    token_file: Path | None = None
    """Required off loopback: requests must carry the token it holds."""
    state_dir: Path | None = None
    """The node's state folder: when set, the dashboard is served at ``/``."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"metrics.port {self.port} is not a TCP port (0-65535)")
        if not self.host:
            raise ConfigError("metrics.host must not be empty")
        if self.enabled and not is_loopback(self.host) and self.token_file is None:
            raise ConfigError(
                f"[metrics] host {self.host} is not a loopback address: set [metrics] "
                "dashboard_token_file so that metrics and the dashboard require a token"
            )


class NodeMetrics:
    """One node's metrics on a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds = Counter(
            "p2pfed_rounds", "Rounds finished, by outcome.", ["outcome"], registry=r
        )
        self.round_duration = Histogram(
            "p2pfed_round_duration_seconds",
            "Wall time of a round, start to aggregate applied.",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.current_round = Gauge("p2pfed_current_round", "The latest round started.", registry=r)
        self.bytes_sent = Counter(
            "p2pfed_bytes_sent", "Bytes sent to peers (payload, after framing).", registry=r
        )
        self.bytes_received = Counter(
            "p2pfed_bytes_received", "Bytes received from peers.", registry=r
        )
        self.epsilon_spent = Gauge(
            "p2pfed_privacy_epsilon_spent",
            "Privacy budget ε spent so far (at the ledger's δ).",
            registry=r,
        )
        self.epsilon_budget = Gauge(
            "p2pfed_privacy_epsilon_budget", "The institution's total ε budget.", registry=r
        )
        self.peers_connected = Gauge(
            "p2pfed_peers_connected", "Roster members with an open connection.", registry=r
        )
        self.exclusions = Counter(
            "p2pfed_exclusions",
            "Exclusions and refused messages of rounds, by reason code.",
            ["reason"],
            registry=r,
        )
        self.roster_expiry = Gauge(
            "p2pfed_roster_expiry_seconds",
            "Seconds until the roster in force expires (rounds stop at 0).",
            registry=r,
        )
        self.drift_alerts = Counter(
            "p2pfed_drift_alerts", "Drift alerts raised, by kind.", ["kind"], registry=r
        )
        for outcome in ROUND_OUTCOMES:
            self.rounds.labels(outcome=outcome)
        for reason in ReasonCode:
            self.exclusions.labels(reason=reason.value)
        for kind in DRIFT_KINDS:
            self.drift_alerts.labels(kind=kind)

    def round_started(self, round_number: int) -> None:
        """A round began."""
        self.current_round.set(round_number)

    def round_finished(self, duration_s: float, outcome: str = "completed") -> None:
        """A round ended after ``duration_s`` seconds."""
        if outcome not in ROUND_OUTCOMES:
            raise LocalError(f"round outcome {outcome!r} is not one of {ROUND_OUTCOMES}")
        if not (duration_s >= 0 and math.isfinite(duration_s)):
            raise LocalError(f"round duration {duration_s} must be a finite number ≥ 0")
        self.rounds.labels(outcome=outcome).inc()
        self.round_duration.observe(duration_s)

    def add_traffic(self, sent: int = 0, received: int = 0) -> None:
        """Count bytes moved (call per frame or per round)."""
        if sent < 0 or received < 0:
            raise LocalError("byte counts must be ≥ 0")
        self.bytes_sent.inc(sent)
        self.bytes_received.inc(received)

    def set_epsilon(self, spent: float, budget: float | None = None) -> None:
        """The privacy ledger's ε after the latest round (and the budget, if known)."""
        self.epsilon_spent.set(spent)
        if budget is not None:
            self.epsilon_budget.set(budget)

    def set_peers(self, connected: int) -> None:
        """How many peers are connected now."""
        self.peers_connected.set(connected)

    def set_roster_expiry(self, seconds_left: float) -> None:
        """Seconds until the roster in force expires (0 once it has)."""
        self.roster_expiry.set(max(0.0, seconds_left))

    def excluded(self, reason: ReasonCode, count: int = 1) -> None:
        """A peer was excluded from a round for ``reason`` (``count`` messages refused)."""
        if count < 1:
            raise LocalError(f"an exclusion counts at least one message, got {count}")
        self.exclusions.labels(reason=ReasonCode(reason).value).inc(count)

    def drift_alert(self, kind: str) -> None:
        """A drift alert of ``kind`` (``DriftKind`` value) was raised."""
        if kind not in DRIFT_KINDS:
            raise LocalError(f"drift kind {kind!r} is not one of {DRIFT_KINDS}")
        self.drift_alerts.labels(kind=kind).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class MetricsServer:
    """Serves ``/metrics`` (and the dashboard at ``/``) for one ``NodeMetrics``.

    Use as a context manager, or ``start()`` / ``close()``; ``close`` stops the thread and
    closes the listening socket. ``port`` 0 picks a free port (see ``address``).
    """

    def __init__(self, metrics: NodeMetrics, config: MetricsConfig) -> None:
        self._metrics = metrics
        self._config = config
        self._server: ReadOnlyServer | None = None

    def _routes(self) -> dict[str, Route]:
        routes: dict[str, Route] = {"/metrics": lambda: (CONTENT_TYPE_LATEST, self.render())}
        state_dir = self._config.state_dir
        if state_dir is not None:
            routes["/"] = lambda: (
                "text/html; charset=utf-8",
                render_page([collect(state_dir)], "p2pfed node dashboard").encode(),
            )
        return routes

    def render(self) -> bytes:
        """The metrics exposition served at ``/metrics``."""
        return self._metrics.render()

    def start(self) -> tuple[str, int]:
        """Listen and serve; returns the bound (host, port)."""
        if self._server is not None:
            raise LocalError("the metrics server is already running")
        c = self._config
        token = None if c.token_file is None else read_token(c.token_file)
        server = ReadOnlyServer(c.host, c.port, self._routes(), token, "metrics")
        server.start()
        self._server = server
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) being served."""
        if self._server is None:
            raise LocalError("the metrics server is not running")
        return self._server.address

    def close(self) -> None:
        """Stop serving and release the socket and thread (idempotent)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_if_enabled(metrics: NodeMetrics, config: MetricsConfig) -> MetricsServer | None:
    """A started server when ``config.enabled``, else ``None`` (the default: nothing listens)."""
    if not config.enabled:
        return None
    server = MetricsServer(metrics, config)
    server.start()
    return server
