"""The namespace harness: hospitals dial out, nobody dials in; the proxy delays and shapes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2pfed.bench._netns.harness import HERE, PREFIX, RELAY_IP, Topology, ours, sweep_stale

pytestmark = pytest.mark.network


def _dial(
    topo: Topology, ns: str, host: str, port: int, timeout: float = 2.0, size: int = 0
) -> dict[str, object]:
    out = topo.run(
        ns,
        [
            sys.executable,
            str(HERE / "probe.py"),
            "dial",
            host,
            str(port),
            "--timeout",
            str(timeout),
            "--bytes",
            str(size),
        ],
        timeout=timeout + 60,
    )
    return json.loads(out.strip().splitlines()[-1])


def test_hospitals_dial_out_but_cannot_be_dialled_in(topology_factory) -> None:  # type: ignore[no-untyped-def]
    topo = topology_factory(2)
    relay_echo = topo.python(topo.relay, "probe.py", "serve", RELAY_IP, "7000", name="relay-echo")
    h1_echo = topo.python(topo.hospital(1), "probe.py", "serve", "0.0.0.0", "7000", name="h1-echo")
    topo.wait_for_text("relay-echo", "listening", 30, relay_echo)
    topo.wait_for_text("h1-echo", "listening", 30, h1_echo)

    # Out through the NAT: the hospital reaches the public relay.
    out = _dial(topo, topo.hospital(1), RELAY_IP, 7000)
    assert out["ok"], out
    # The relay sees the router's public address, not the hospital's (masquerade).
    # In: neither the relay nor the other hospital can open a connection to hospital 1,
    # not at its router's public address nor at its private one.
    for ns in (topo.relay, topo.hospital(2)):
        assert not _dial(topo, ns, topo.router_ip(1), 7000, timeout=1.0)["ok"]
        assert not _dial(topo, ns, topo.hospital_ip(1), 7000, timeout=1.0)["ok"]
    # A blackholed hospital loses even its way out; restoring gives it back.
    topo.blackhole(1)
    assert not _dial(topo, topo.hospital(1), RELAY_IP, 7000, timeout=1.0)["ok"]
    topo.restore(1)
    assert _dial(topo, topo.hospital(1), RELAY_IP, 7000)["ok"]


def test_a_public_hospital_is_dialled_by_all_and_the_natted_ones_by_none(topology_factory) -> None:  # type: ignore[no-untyped-def]
    topo = topology_factory(2, public=(1,))
    assert topo.hospital_ip(1) == "198.51.100.31" and topo.hospital_ip(2) == "10.2.0.2"
    echo = topo.python(topo.hospital(1), "probe.py", "serve", "0.0.0.0", "7000", name="h1-echo")
    nat = topo.python(topo.hospital(2), "probe.py", "serve", "0.0.0.0", "7000", name="h2-echo")
    topo.wait_for_text("h1-echo", "listening", 30, echo)
    topo.wait_for_text("h2-echo", "listening", 30, nat)
    # The public one takes connections from the relay and from behind the other's NAT ...
    for ns in (topo.relay, topo.hospital(2)):
        assert _dial(topo, ns, topo.hospital_ip(1), 7000)["ok"]
    # ... and cannot dial into that NAT, at its router's address or its private one.
    assert not _dial(topo, topo.hospital(1), topo.router_ip(2), 7000, timeout=1.0)["ok"]
    assert not _dial(topo, topo.hospital(1), topo.hospital_ip(2), 7000, timeout=1.0)["ok"]


def test_the_proxy_adds_delay_and_caps_bandwidth(topology_factory) -> None:  # type: ignore[no-untyped-def]
    topo = topology_factory(1)
    echo = topo.python(topo.relay, "probe.py", "serve", "127.0.0.1", "7000", name="echo")
    # 10 ms each way per pass, 1 MB/s: an echo crosses the proxy twice (there and back).
    proxy = topo.python(
        topo.relay,
        "proxy.py",
        "--listen",
        f"{RELAY_IP}:7100",
        "--to",
        "127.0.0.1:7000",
        "--delay",
        "0.01",
        "--rate",
        "1e6",
        name="proxy",
    )
    topo.wait_for_text("echo", "listening", 30, echo)
    topo.wait_for_text("proxy", "listening", 30, proxy)
    direct = _dial(topo, topo.relay, "127.0.0.1", 7000)
    shaped = _dial(topo, topo.hospital(1), RELAY_IP, 7100, size=500_000)
    assert direct["ok"] and shaped["ok"], (direct, shaped)
    assert shaped["rtt"] >= 0.02  # both directions delayed
    # 500 kB each way at 1 MB/s per direction takes at least half a second.
    assert shaped["seconds"] >= 0.45


def test_teardown_leaves_nothing_even_when_the_test_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.netns.conftest import REASON

    if REASON:
        pytest.skip(REASON)
    topo = Topology(1, tmp_path).build()
    proc = topo.python(topo.hospital(1), "probe.py", "serve", "0.0.0.0", "7000", name="e")
    try:
        topo.wait_for_text("e", "listening", 30, proc)
        with pytest.raises(ZeroDivisionError):
            try:
                1 / 0  # noqa: B018 - the failing test body
            finally:
                topo.close()
    finally:
        topo.close()
    assert proc.poll() is not None
    assert not ours()


def test_a_dead_runs_namespaces_are_swept(topology_factory) -> None:  # type: ignore[no-untyped-def]
    topology_factory(0)  # skips unless root with nft
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"{PREFIX}{gone.pid}-0-h1"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in sweep_stale()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert stale not in names
