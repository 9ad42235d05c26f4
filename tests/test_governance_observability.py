import io
import json
import logging
import threading
import urllib.request

import pytest

from p2pfed.errors import ConfigError, LocalError, ReasonCode
from p2pfed.governance.logs import JsonFormatter, remove_logging, setup_logging
from p2pfed.governance.metrics import (
    MetricsConfig,
    MetricsServer,
    NodeMetrics,
    serve_if_enabled,
)

EXPECTED = [
    "p2pfed_rounds_total",
    "p2pfed_round_duration_seconds_bucket",
    "p2pfed_round_duration_seconds_count",
    "p2pfed_current_round",
    "p2pfed_bytes_sent_total",
    "p2pfed_bytes_received_total",
    "p2pfed_privacy_epsilon_spent",
    "p2pfed_privacy_epsilon_budget",
    "p2pfed_peers_connected",
    "p2pfed_exclusions_total",
    "p2pfed_drift_alerts_total",
]


def exercise(metrics):
    metrics.round_started(3)
    metrics.round_finished(2.5)
    metrics.round_finished(40.0, outcome="failed")
    metrics.add_traffic(sent=1000, received=2500)
    metrics.set_epsilon(1.25, budget=8.0)
    metrics.set_peers(4)
    metrics.excluded(ReasonCode.BAD_SIGNATURE)
    metrics.drift_alert("feature-shift")


def test_metrics_endpoint_serves_every_metric_on_loopback():
    metrics = NodeMetrics()
    threads_before = threading.active_count()
    with MetricsServer(metrics, MetricsConfig(enabled=True, port=0)) as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        exercise(metrics)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            text = resp.read().decode()
    for name in EXPECTED:
        assert name in text, name
    assert 'p2pfed_rounds_total{outcome="completed"} 1.0' in text
    assert 'p2pfed_exclusions_total{reason="bad-signature"} 1.0' in text
    assert 'p2pfed_exclusions_total{reason="timeout"} 0.0' in text
    assert "p2pfed_bytes_received_total 2500.0" in text
    assert "p2pfed_privacy_epsilon_spent 1.25" in text
    assert 'p2pfed_round_duration_seconds_bucket{le="5.0"} 1.0' in text
    assert threading.active_count() == threads_before
    with pytest.raises(OSError):  # the socket is closed
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=1)


def test_two_nodes_in_one_process_do_not_clash():
    a, b = NodeMetrics(), NodeMetrics()
    a.set_peers(3)
    b.set_peers(7)
    assert b"p2pfed_peers_connected 3.0" in a.render()
    assert b"p2pfed_peers_connected 7.0" in b.render()


def test_off_by_default_and_bad_values():
    assert MetricsConfig().enabled is False and MetricsConfig().host == "127.0.0.1"
    assert serve_if_enabled(NodeMetrics(), MetricsConfig()) is None
    with pytest.raises(ConfigError, match="not a TCP port"):
        MetricsConfig(port=70000)
    m = NodeMetrics()
    with pytest.raises(LocalError, match="outcome"):
        m.round_finished(1.0, outcome="maybe")
    with pytest.raises(LocalError, match="finite"):
        m.round_finished(float("nan"))
    with pytest.raises(LocalError, match="drift kind"):
        m.drift_alert("nope")


def test_port_in_use_is_one_clear_error():
    m = NodeMetrics()
    with MetricsServer(m, MetricsConfig(enabled=True, port=0)) as first:
        port = first.address[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve_if_enabled(m, MetricsConfig(enabled=True, port=port))


def test_json_log_lines_carry_extras():
    stream = io.StringIO()
    setup_logging("DEBUG", json_format=True, stream=stream)
    try:
        log = logging.getLogger("p2pfed.test")
        log.info("round %d done", 4, extra={"round": 4, "peer": "12D3KooW"})
        logging.getLogger("libp2p").warning("from libp2p")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        remove_logging()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "round 4 done" and lines[0]["round"] == 4
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "p2pfed.test"
    assert lines[0]["ts"].endswith("+00:00") and "peer" in lines[0]
    assert lines[1]["logger"] == "libp2p"
    assert "ValueError: boom" in lines[2]["exc"]
    assert not any(getattr(h, "_p2pfed_handler", False) for h in logging.getLogger().handlers)


def test_plain_format_and_formatter_alone():
    stream = io.StringIO()
    setup_logging("INFO", stream=stream, capture=())
    try:
        logging.getLogger("p2pfed.x").info("hello")
    finally:
        remove_logging()
    assert "INFO" in stream.getvalue() and "p2pfed.x: hello" in stream.getvalue()
    rec = logging.LogRecord("n", logging.WARNING, "f", 1, "m", None, None)
    rec.path = __import__("pathlib").Path("/x")
    assert json.loads(JsonFormatter().format(rec))["path"] == "/x"
