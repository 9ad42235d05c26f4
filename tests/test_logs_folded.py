"""Logs for people: failed dials folded per member, and ``log_json`` emitting only JSON."""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import warnings
from types import SimpleNamespace

import pytest
import trio
from transport_harness import seed_for

from p2pfed.errors import BrokenError
from p2pfed.governance.logs import remove_logging, setup_logging
from p2pfed.transport.libp2p import Libp2pTransport
from p2pfed.transport.libp2p_logging import DialNotices, dial_reason, roster_names


def _refused() -> Exception:
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Error connecting: Connection refused")
        except OSError as inner:
            raise RuntimeError("all attempts to connect to 127.0.0.1:41002 failed") from inner
    except RuntimeError as outer:
        return outer


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failed_dials_fold_into_one_line_per_member_per_interval() -> None:
    clock = _Clock()
    notices = DialNotices({"B": "hospital-b"}.get, interval=8.0, clock=clock)  # type: ignore[arg-type]
    addr = ["/ip4/127.0.0.1/tcp/41002"]
    first = notices.failed("B", addr, _refused())
    assert first is not None and first.startswith(
        "waiting for hospital-b (/ip4/127.0.0.1/tcp/41002): connection refused; retrying"
    )
    lines = []
    for _ in range(20):  # libp2p would have logged each of these at ERROR
        clock.now += 0.25
        lines.append(notices.failed("B", addr, _refused()))
    assert lines == [None] * 20  # 5 s < the interval: nothing more
    clock.now += 3.0
    assert notices.failed("B", addr, _refused()) == (
        "waiting for hospital-b (/ip4/127.0.0.1/tcp/41002): connection refused "
        "(21 failed dials in 8 s)"
    )
    assert notices.connected("B") == "connected to hospital-b"
    assert notices.connected("B") is None  # said once


def test_the_reason_is_the_os_error_inside_the_chain() -> None:
    assert dial_reason(_refused()) == "connection refused"
    assert dial_reason(TimeoutError("timed out")) == "timed out"
    assert dial_reason(ExceptionGroup("x", [_refused()])) == "connection refused"


def test_member_names_come_from_the_roster_gate() -> None:
    gate = SimpleNamespace(
        roster=SimpleNamespace(members=[SimpleNamespace(name="h-b", peer_id="P")])
    )
    name_of = roster_names(gate)
    assert name_of("P") == "h-b" and name_of("Q") == "Q"
    assert roster_names(lambda _: True)("P") == "P"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.network
async def test_a_member_down_is_one_json_line_naming_it_not_a_stream_of_libp2p_errors() -> None:
    out = io.StringIO()
    setup_logging("INFO", json_format=True, stream=out)
    try:
        peer = Libp2pTransport(seed_for("down"), lambda _: True).local_peer
        port = _closed_port()
        gate = SimpleNamespace(
            roster=SimpleNamespace(members=[SimpleNamespace(name="hospital-b", peer_id=peer)])
        )

        class Gate:  # what the roster gate offers: admission, and the roster's names
            roster = gate.roster

            def __call__(self, p: str) -> bool:
                return True

        async with Libp2pTransport(
            seed_for("up"), Gate(), peer_addrs={peer: [f"/ip4/127.0.0.1/tcp/{port}"]}
        ) as t:
            for _ in range(6):
                with pytest.raises(BrokenError):
                    await t.open_stream(peer, "/probe/1")
                await trio.sleep(0)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
        logging.getLogger("some.library").error("a library's error")
    finally:
        remove_logging()
    lines = out.getvalue().splitlines()
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    waiting = [d for d in docs if d["msg"].startswith("waiting for")]
    assert [d["msg"].split(";")[0] for d in waiting] == [
        f"waiting for hospital-b (/ip4/127.0.0.1/tcp/{port}): connection refused"
    ]
    assert waiting[0]["peer"] == "hospital-b"
    assert not [d for d in docs if d["logger"].startswith("libp2p.transport.tcp")]
    assert any("UserWarning: a library's warning" in d["msg"] for d in docs)
    assert any(d["msg"] == "a library's error" for d in docs)
