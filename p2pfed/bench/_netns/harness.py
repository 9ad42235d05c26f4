"""Network namespaces for NAT scenarios: a public bridge, a relay, hospitals behind NAT.

Theory of operation: one ``Topology`` builds, as root, a namespace ``inet`` holding a bridge
(the public internet, 198.51.100.0/24), a namespace ``relay`` on that bridge (198.51.100.2),
and per hospital ``i`` a router namespace (public 198.51.100.(10+i), LAN 10.i.0.1/24) and
the hospital's namespace (10.i.0.2, default route via its router). Each router masquerades
outbound traffic with nftables and drops every new inbound connection, as a hospital
firewall does: hospitals can dial out, nobody can dial in. A hospital listed in ``public``
has no router: its namespace sits on the bridge itself (198.51.100.(30+i)), dialable by all.
``forwards`` maps a hospital to a (public port, LAN port) pair its router forwards to it
(DNAT), as a hospital's firewall does for a published service. Processes started with
``spawn`` run inside a namespace, each in its own session; ``close`` kills them (and
anything else left in our namespaces) and deletes the namespaces, which removes their veths.
Namespace names carry a prefix and the creating process's PID, so ``sweep_stale`` removes
what a killed earlier run left behind without touching a concurrent run's namespaces.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PREFIX = "p2pfnat-"
RELAY_IP = "198.51.100.2"
HERE = Path(__file__).resolve().parent
_counter = itertools.count()

NAT_KINDS = {"symmetric": "masquerade random", "cone": "masquerade"}
ROUTER_RULES = """
table ip nat {
  chain pre { type nat hook prerouting priority -100; %(dnat)s }
  chain post { type nat hook postrouting priority 100; oifname "pub" %(nat)s; }
}
table inet fw {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct status dnat accept
    iifname "lan" oifname "pub" accept
  }
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "pub" ct state new drop
  }
}
"""
BLACKHOLE = """
table inet blackhole {
  chain forward { type filter hook forward priority -10; policy drop; }
}
"""


def skip_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (ip netns, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"network-namespace tests need the '{tool}' command (apt-get install nftables)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    return None


def _sh(*argv: str, ns: str | None = None, check: bool = True, stdin: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _sh("ip", "netns", "list").splitlines() if line.strip()]


def _remove_namespace(ns: str) -> None:
    for pid in _sh("ip", "netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)  # a process we started inside our namespace
    _sh("ip", "netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces of ours whose creating process is gone; returns their names."""
    swept = []
    for ns in _namespaces():
        if not ns.startswith(PREFIX):
            continue
        owner = ns[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _remove_namespace(ns)
            swept.append(ns)
    return swept


def ours() -> list[str]:
    """Namespaces this process created and has not deleted yet."""
    return [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}{os.getpid()}-")]


class Topology:
    """A relay and ``hospitals`` hospitals behind their own NAT routers (see module doc)."""

    def __init__(
        self,
        hospitals: int,
        logs: Path,
        public: Sequence[int] = (),
        nat: str = "symmetric",
        forwards: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        if nat not in NAT_KINDS:
            raise ValueError(f"nat must be one of {sorted(NAT_KINDS)}, not {nat!r}")
        self.nat = nat
        self.tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.hospitals = hospitals
        self.public = frozenset(public)
        self.forwards = dict(forwards or {})
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.created: list[str] = []

    # -- names and addresses ------------------------------------------------------------

    def ns(self, role: str) -> str:
        return f"{self.tag}-{role}"

    @property
    def relay(self) -> str:
        return self.ns("relay")

    def hospital(self, i: int) -> str:
        return self.ns(f"h{i}")

    def router(self, i: int) -> str:
        return self.ns(f"r{i}")

    @staticmethod
    def router_ip(i: int) -> str:
        return f"198.51.100.{10 + i}"

    def hospital_ip(self, i: int) -> str:
        return f"198.51.100.{30 + i}" if i in self.public else f"10.{i}.0.2"

    # -- building -----------------------------------------------------------------------

    def build(self) -> Topology:
        inet = self.ns("inet")
        self._add(inet)
        _sh("ip", "link", "add", "br0", "type", "bridge", ns=inet)
        _sh("ip", "link", "set", "br0", "up", ns=inet)
        self._add(self.relay)
        self._wire(self.relay, "pub", inet, "relay", f"{RELAY_IP}/24", bridge=True)
        for i in range(1, self.hospitals + 1):
            router, hospital = self.router(i), self.hospital(i)
            if i in self.public:
                self._add(hospital)
                self._wire(hospital, "pub", inet, f"h{i}", f"{self.hospital_ip(i)}/24", bridge=True)
                continue
            self._add(router)
            self._add(hospital)
            self._wire(router, "pub", inet, f"r{i}", f"{self.router_ip(i)}/24", bridge=True)
            self._wire(
                router,
                "lan",
                hospital,
                "lan",
                f"10.{i}.0.1/24",
                peer_addr=f"{self.hospital_ip(i)}/24",
            )
            _sh("ip", "route", "add", "default", "via", f"10.{i}.0.1", ns=hospital)
            _sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=router)
            outside, inside = self.forwards.get(i, (None, None))
            dnat = (
                f'iifname "pub" tcp dport {outside} dnat to {self.hospital_ip(i)}:{inside};'
                if outside
                else ""
            )
            rules = ROUTER_RULES % {"nat": NAT_KINDS[self.nat], "dnat": dnat}
            _sh("nft", "-f", "-", ns=router, stdin=rules)
        return self

    def _add(self, ns: str) -> None:
        _sh("ip", "netns", "add", ns)
        self.created.append(ns)
        _sh("ip", "link", "set", "lo", "up", ns=ns)

    def _wire(
        self,
        ns: str,
        name: str,
        other: str,
        other_name: str,
        addr: str,
        bridge: bool = False,
        peer_addr: str | None = None,
    ) -> None:
        _sh(
            "ip",
            "link",
            "add",
            name,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            other_name,
            "netns",
            other,
        )
        _sh("ip", "addr", "add", addr, "dev", name, ns=ns)
        _sh("ip", "link", "set", name, "up", ns=ns)
        if bridge:
            _sh("ip", "link", "set", other_name, "master", "br0", ns=other)
        if peer_addr:
            _sh("ip", "addr", "add", peer_addr, "dev", other_name, ns=other)
        _sh("ip", "link", "set", other_name, "up", ns=other)

    # -- faults -------------------------------------------------------------------------

    def blackhole(self, i: int) -> None:
        """Drop everything hospital ``i``'s router forwards (established flows too)."""
        _sh("nft", "-f", "-", ns=self.router(i), stdin=BLACKHOLE)

    def restore(self, i: int) -> None:
        _sh("nft", "delete", "table", "inet", "blackhole", ns=self.router(i))

    # -- processes ----------------------------------------------------------------------

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        name: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns``, output to ``logs/<name>.log``; killed by ``close``."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def python(self, ns: str, script: str, *args: str, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(ns, [sys.executable, str(HERE / script), *args], name)

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
        )
        return done.stdout + done.stderr

    def wait_for_text(
        self, name: str, text: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
    ) -> None:
        """Wait until ``logs/<name>.log`` contains ``text`` (fails if ``proc`` exits)."""
        path = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
        raise AssertionError(f"{name}: {text!r} not seen within {timeout} s; log ends:\n{tail}")

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM ``proc``'s session, SIGKILL it after ``grace`` seconds."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for proc in self.procs:  # all at once: daemons take seconds to stop cleanly
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            self.stop(proc)
        for ns in reversed(self.created):
            _remove_namespace(ns)
        self.created.clear()
