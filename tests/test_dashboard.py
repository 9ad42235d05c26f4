"""The dashboard: its inputs collected from a node's files, its page rendered, and its server.

Attacks performed: a member name, error, drift message and abort reason carrying markup
(it must come out escaped); requests to a server bound off loopback without a token and
with a wrong one (401, and nothing of the page in the body); a POST (405); a daemon
configured off loopback without a token (refused at start); an edited audit log (shown
as broken, naming the entry).
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from p2pfed.config import Config, MetricsSection, NodeSection
from p2pfed.daemon.reporter import metrics_config
from p2pfed.errors import ConfigError
from p2pfed.governance.dashboard import render_page
from p2pfed.governance.dashboard_data import (
    AuditStatus,
    DashboardData,
    MemberRow,
    RoundRow,
    collect,
)
from p2pfed.governance.metrics import MetricsConfig, MetricsServer, NodeMetrics
from p2pfed.governance.status_file import write_status
from p2pfed.governance.web import check_request, is_loopback
from tests.governance_helpers import STAGES, make_signer, write_demo_log

EVIL = "<script>alert(1)</script>"
TOKEN = "s3cret-dashboard-token-0123456789"


def _data(**over: object) -> DashboardData:
    base = DashboardData(
        name="hospital-a",
        state="running",
        updated=100.0,
        planned_rounds=4,
        members=(MemberRow("hospital-b", True, ("/ip4/127.0.0.1/tcp/4001",), 2, None),),
        rounds=(RoundRow(0, "completed", 1.5, 3), RoundRow(1, "completed", 2.0, 3)),
        epsilon=((0, 0.4), (1, 0.7)),
        epsilon_budget=2.0,
        planned=((0, 0.4), (1, 0.7), (2, 0.9), (3, 1.1)),
        audit=AuditStatus(True, 12),
    )
    return DashboardData(**{**{f: getattr(base, f) for f in base.__slots__}, **over})


def test_every_peer_supplied_string_is_escaped():
    # A member named with markup (an admin's typo or a hostile roster) and the strings that
    # carry other members' behaviour into the page: errors, abort reasons, drift messages.
    page = render_page(
        [
            _data(
                name=EVIL,
                members=(MemberRow(EVIL, False, (EVIL,), None, f"excluded: {EVIL}"),),
                rounds=(RoundRow(0, "aborted", 1.0, 2, EVIL),),
                drift=((0, EVIL),),
            )
        ],
        title=EVIL,
    )
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 7


def test_the_page_shows_members_rounds_epsilon_points_and_audit_status():
    page = render_page([_data()], "node", now=130.0)
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<td>hospital-b</td>" in page and "connected" in page
    assert len(re.findall(r'class="eps-point"', page)) == 2  # one per charged round
    assert 'class="planned"' in page and 'class="budget"' in page
    assert "audit chain verified: 12 entries" in page
    assert "status written 30 s ago" in page
    far = render_page([_data(epsilon_budget=50.0)], "node")
    assert 'class="budget"' not in far and "budget 50: far above" in far  # curves stay legible
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")


def test_a_broken_audit_chain_is_shown_with_the_entry():
    page = render_page(
        [_data(audit=AuditStatus(False, 9, "BAD at line 4 (seq 3): signature"))], "n"
    )
    assert "audit chain BROKEN: BAD at line 4 (seq 3): signature" in page


def _state(tmp_path: Path, rounds: int = 3) -> Path:
    state = tmp_path / "hospital-a" / "state"
    state.mkdir(parents=True)
    write_demo_log(state / "audit.jsonl", make_signer(b"\x01" * 32), rounds=rounds)
    write_status(
        state,
        {
            "name": "hospital-a",
            "state": "running",
            "rounds": 5,
            "epsilon_budget": 10.0,
            "members": {
                "hospital-b": {"connected": True, "last_round": 3, "last_error": None},
                "hospital-c": {
                    "connected": False,
                    "addresses": ["/ip4/10.0.0.3/tcp/4001"],
                    "last_round": 1,
                    "last_error": "round 2: excluded, bad-signature (frame signature invalid)",
                },
            },
        },
    )
    return state


def test_collect_reads_status_audit_and_plans_the_epsilon_curve(tmp_path):
    d = collect(_state(tmp_path))
    assert (d.name, d.state, d.planned_rounds, d.epsilon_budget) == ("hospital-a", "running", 5, 10)
    assert [m.name for m in d.members] == ["hospital-b", "hospital-c"]
    assert d.members[1].addresses == ("/ip4/10.0.0.3/tcp/4001",) and not d.members[1].connected
    assert [r.round for r in d.rounds] == [1, 2, 3] and d.rounds[0].contributors == 3
    assert d.epsilon == ((1, 0.5), (2, 1.0), (3, 1.5))
    # The plan: the accountant's ε for the recorded mechanism, one point per configured round.
    assert len(d.planned) == 5
    assert all(a < b for (_, a), (_, b) in zip(d.planned, d.planned[1:], strict=False))
    assert d.audit.verified and d.audit.entries > 0
    # Each round's stages, as the daemon audited them, reach the page's round timeline.
    assert d.rounds[0].stages_s == STAGES
    page = render_page([d], "node")
    assert "train 0.50 s · aggregate 1.50 s · commit 0.25 s · evaluate 0.25 s" in page


def test_an_edited_audit_log_shows_as_broken(tmp_path):
    state = _state(tmp_path)
    assert collect(state).audit.verified  # seen (and cached) before the edit
    lines = (state / "audit.jsonl").read_text().splitlines()
    entry = json.loads(lines[4])
    entry["body"]["round"] = 99  # rewritten history: the signature no longer matches
    lines[4] = json.dumps(entry, separators=(",", ":"))
    (state / "audit.jsonl").write_text("\n".join(lines) + "\n")
    d = collect(state)
    assert not d.audit.verified and "line 5" in str(d.audit.problem)
    assert "audit chain BROKEN" in render_page([d], "n")


def _non_loopback_address() -> str:
    """This machine's address on its default route, or 0.0.0.0's loopback if it has none."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
        address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    return address


def _get(url: str, method: str = "GET", headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_off_loopback_requests_need_the_token(tmp_path):
    state = _state(tmp_path)
    token_file = tmp_path / "dashboard.token"
    token_file.write_text(TOKEN + "\n")
    config = MetricsConfig(True, "0.0.0.0", 0, token_file, state)
    with MetricsServer(NodeMetrics(), config) as server:
        base = f"http://{_non_loopback_address()}:{server.address[1]}"
        for path in ("/", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abc"}):
                code, body = _get(base + path, headers=headers)
                assert code == 401 and body == (
                    "A valid dashboard token is required (Authorization: Bearer).\n"
                )
        code, body = _get(base + "/?token=" + TOKEN[:-1])
        assert code == 401 and "hospital-c" not in body
        code, body = _get(base + "/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert code == 200 and "<td>hospital-c</td>" in body
        assert _get(base + "/?token=" + TOKEN)[0] == 200  # what a browser can send
        code, body = _get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert code == 200 and "p2pfed_rounds_total" in body


def test_only_get_and_head_are_served(tmp_path):
    config = MetricsConfig(True, "127.0.0.1", 0, None, _state(tmp_path))
    with MetricsServer(NodeMetrics(), config) as server:
        base = f"http://127.0.0.1:{server.address[1]}"
        for method in ("POST", "PUT", "DELETE"):
            code, body = _get(base + "/", method=method)
            assert code == 405 and "hospital" not in body
        assert _get(base + "/", method="HEAD") == (200, "")
        code, body = _get(base + "/")
        assert code == 200 and "<td>hospital-b</td>" in body
        assert _get(base + "/nothing")[0] == 404


def test_a_daemon_bound_off_loopback_without_a_token_refuses_to_start(tmp_path):
    config = Config(node=NodeSection(name="h"), metrics=MetricsSection(port=9999, host="0.0.0.0"))
    with pytest.raises(ConfigError, match=r"not a loopback address: set \[metrics\] dashboard_"):
        metrics_config(SimpleNamespace(config=config, state_dir=tmp_path))  # what serve() calls
    # Loopback needs none; a hostname may resolve anywhere, so it counts as off loopback.
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("dashboard.example")
    with pytest.raises(ConfigError, match="not a loopback"):
        MetricsConfig(True, "dashboard.example", 9999)


def test_a_short_or_missing_token_file_is_one_sentence(tmp_path):
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    for path, message in ((short, "at least 16"), (tmp_path / "none", "cannot read")):
        with pytest.raises(ConfigError, match=message):
            MetricsServer(NodeMetrics(), MetricsConfig(True, "0.0.0.0", 0, path, tmp_path)).start()


def test_check_request_decides_before_any_page_runs():
    assert check_request({"REQUEST_METHOD": "GET"}, None) is None
    assert check_request({"REQUEST_METHOD": "POST"}, TOKEN)[0].startswith("405")
    assert check_request({"REQUEST_METHOD": "GET"}, TOKEN)[0].startswith("401")
    ok = {"REQUEST_METHOD": "GET", "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    assert check_request(ok, TOKEN) is None


def test_epsilon_per_round_replays_the_ledger_including_a_failed_rounds_release(tmp_path):
    # A round whose noised update was released but which then failed spent ε, and has no
    # audit ``dp`` entry: the ledger is the record of spend, so the chart follows it.
    from p2pfed.privacy import PrivacyLedger
    from p2pfed.privacy.ledger_format import Release
    from p2pfed.privacy.mechanisms import NoiseMode

    state = _state(tmp_path, rounds=2)
    with PrivacyLedger(state / "privacy.ledger", 10.0, 1e-5, "rdp") as ledger:
        for r in range(3):
            ledger.reserve(Release(r, 1.1, 0.1, 4, 1.0, NoiseMode.DP_SGD))
        spent = ledger.spent_epsilon()
    status = json.loads((state / "status.json").read_text())
    status |= {"privacy_ledger": str(state / "privacy.ledger"), "accountant": "rdp", "delta": 1e-5}
    write_status(state, status)
    d = collect(state)
    assert [r for r, _ in d.epsilon] == [0, 1, 2]  # the audit log has dp entries for 1, 2 only
    assert d.epsilon[-1][1] == pytest.approx(spent)
    assert d.epsilon[0][1] < d.epsilon[1][1] < d.epsilon[2][1]


def test_demo_dashboard_port_out_of_range_is_one_sentence(capsys):
    from p2pfed.cli import main

    assert main(["demo", "--dashboard", "--dashboard-port", "70000"]) == 2
    assert "--dashboard-port must be a TCP port (0-65535), got 70000" in capsys.readouterr().err
