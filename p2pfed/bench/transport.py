"""``p2pfed bench transport``: bulk throughput of the libp2p transport against plain trio TCP.

Theory of operation: for every payload size, three cases run back to back — our
``Libp2pTransport`` (TCP + Yamux, roster-gated) secured by Noise (``libp2p_*`` keys), the
same secured by libp2p TLS 1.3 (``tls_*`` keys), and plain trio TCP, the baseline that
shares the machine's state at that moment. Each case starts a *fresh* receiver process
(``python -m p2pfed.bench.transport --receive ...``, which reports JSON lines on stdout),
so the receiver's peak RSS (``VmHWM``, see ``peak_rss_kb``) belongs to that case alone; the
sender is this process. Sender and receiver CPU seconds are reported too (``cpu_mb_s``: the
MB/s the slower side's CPU time allows). The receiver reads the payload into one preallocated
buffer (as a peer receiving a tensor would), then answers with one byte; the clock runs from
the sender's first payload byte to that answer, so connection set-up is excluded from MB/s and
reported separately: ``libp2p_connect_ms`` is the first connect + Noise + Yamux + first
admitted stream of a fresh process, ``libp2p_warm_connect_ms`` the median of the next
``WARM_CONNECTS`` (each after a disconnect), as a long-running peer would see.

The same run measures what the ciphers alone allow (``aead_mb_s``: one core sealing and
opening each channel's messages, ChaCha20-Poly1305 over Noise's 65,519-byte messages and
AES-256-GCM over TLS's 16 KiB records, in this process) and, per case, ``*_cipher_bound_ratio``:
the share of plain TCP's rate a channel with no cost but TCP's own CPU and its cipher's could
reach (``cipher_bound_ratio``), the ceiling a channel written in C would meet on this machine.

MB/s are 10^6 bytes per second of payload. Nothing is asserted: figures on a shared machine
are only comparable within one run, which is why the baseline runs in the same run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import resource
import select
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from p2pfed.bench._timing import best_of, timed
from p2pfed.errors import BrokenError, ConfigError
from p2pfed.output import print_json
from p2pfed.settings import comma_list

# torch, trio, libp2p and the modules that load them are imported inside functions: every
# benchmark module is imported when `p2pfed --help` builds its parser.
NAME = "transport"
HELP = "Throughput of the libp2p transport (Noise or TLS, Yamux) vs plain trio TCP, in processes."

DEFAULT_SIZES = (1, 16, 64, 256)
PROTOCOL = "/p2pfed/bench/bulk/1"
PING_PROTOCOL = "/p2pfed/bench/ping/1"
WARM_CONNECTS = 5
CHUNK = 1 << 20
CASE_TIMEOUT_S = 300.0
_LENGTH = struct.Struct(">Q")

KINDS = ("noise", "tls", "tcp")
"""What a case measures: the transport secured by Noise, by TLS 1.3, or plain trio TCP."""

AEADS = {"noise": ("chacha20_poly1305", 65_519), "tls": ("aes_256_gcm", 16_384)}
"""Each secure kind's AEAD and message size: Noise's largest message, TLS's full record
(OpenSSL's TLS 1.3 offers TLS_AES_256_GCM_SHA384 first, and py-libp2p's TLS keeps its order)."""
AEAD_BYTES = 32 << 20

Report = Callable[[dict[str, Any]], None]
"""How a receiver hands its messages (ready, figures, error) to the sender's process."""


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options and set ``func``."""
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="payload sizes in MiB, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=1,
        help="libp2p streams the payload is striped across (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each case, interleaved; figures are the medians (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print only the JSON document (no progress lines)"
    )
    parser.set_defaults(func=run)


parse_sizes = comma_list(int, "a whole number of MiB in 1..4096", lambda n: 1 <= n <= 4096)


def run(args: argparse.Namespace) -> int:
    """Run every case and print the JSON document."""
    sizes = args.sizes
    if not 1 <= args.streams <= 64:
        raise ConfigError(f"--streams must be in 1..64, got {args.streams}")
    if not 1 <= args.repeats <= 20:
        raise ConfigError(f"--repeats must be in 1..20, got {args.repeats}")
    # libp2p's background identify exchange logs an ERROR whenever the connect probe's
    # disconnect overtakes it; that is expected here and would bury the figures.
    libp2p_log = logging.getLogger("p2pfed.libp2p")
    previous_level = libp2p_log.level
    libp2p_log.setLevel(logging.CRITICAL)
    try:
        return _run_cases(sizes, args.streams, args.repeats, quiet=args.json)
    finally:
        libp2p_log.setLevel(previous_level)


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


# A kind's median figure → (its JSON name after the kind's prefix, decimals kept).
FIGURES = {
    "mb_s": ("mb_s", 1),
    "peak_rss_mb": ("receiver_peak_rss_mb", 1),
    "connect_ms": ("connect_ms", 2),
    "warm_connect_ms": ("warm_connect_ms", 2),
    "cpu_mb_s": ("cpu_mb_s", 1),
    "cpu_s": ("sender_cpu_s", 3),
    "receiver_cpu_s": ("receiver_cpu_s", 3),
}
TCP_FIGURES = ("mb_s", "peak_rss_mb", "cpu_mb_s")  # plain TCP: no handshake, one side timed
PREFIX = {"noise": "libp2p_", "tls": "tls_", "tcp": "tcp_"}
OLDER_NAMES = {"libp2p_ratio": "ratio", "libp2p_receiver_peak_rss_mb": "receiver_peak_rss_mb"}
"""Noise figures the reports named without a prefix before TLS was measured; kept."""


def _case_figures(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    """One size's JSON figures: each kind's medians, and its MB/s as a ratio of plain TCP's."""
    tcp = medians["tcp"]["mb_s"]
    out = {}
    for kind, figures in medians.items():
        kept = TCP_FIGURES if kind == "tcp" else tuple(FIGURES)
        named = {FIGURES[f][0]: round(figures[f], FIGURES[f][1]) for f in kept}
        if kind != "tcp":
            named["ratio"] = round(figures["mb_s"] / tcp, 3)
        for name, value in named.items():
            key = PREFIX[kind] + name
            out[OLDER_NAMES.get(key, key)] = value
    return out


def aead_rates(total: int = AEAD_BYTES, repeats: int = 3) -> dict[str, float]:
    """MB/s of plaintext one core seals and opens at, for each secure kind's AEAD (best run)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    classes: dict[str, type[ChaCha20Poly1305] | type[AESGCM]] = {
        "chacha20_poly1305": ChaCha20Poly1305,
        "aes_256_gcm": AESGCM,
    }
    rates = {}
    for name, size in AEADS.values():
        aead = classes[name](os.urandom(32))
        nonce, message, count = os.urandom(12), os.urandom(size), max(1, total // size)
        sealed = aead.encrypt(nonce, message, None)
        # One key and nonce throughout: a measurement of speed, nothing here is secret.
        for op, run_once in (
            ("seal", functools.partial(aead.encrypt, nonce, message, None)),
            ("open", functools.partial(aead.decrypt, nonce, sealed, None)),
        ):
            best = best_of(repeats, _repeated(run_once, count)).seconds
            rates[f"{name}_{op}"] = round(count * size / 1e6 / max(best, 1e-9), 1)
    return rates


def _repeated(call: Callable[[], object], count: int) -> Callable[[], None]:
    def calls() -> None:
        for _ in range(count):
            call()

    return calls


def cipher_bound_ratio(tcp_mb_s: float, tcp_cpu_mb_s: float, seal: float, open_: float) -> float:
    """The share of plain TCP's rate a channel costing only TCP's CPU and the cipher's reaches.

    Each side spends TCP's own CPU per byte plus its cipher's (the slower of sealing and
    opening), so its CPU allows ``1 / (1/tcp_cpu + 1/cipher)`` MB/s; never more than TCP's.
    """
    cpu_bound = 1 / (1 / tcp_cpu_mb_s + 1 / min(seal, open_))
    return round(min(cpu_bound, tcp_mb_s) / tcp_mb_s, 3)


def _run_cases(sizes: list[int], streams: int, repeats: int, *, quiet: bool) -> int:
    rates = aead_rates()
    cases = []
    for size_mb in sizes:
        if not quiet:
            print(f"transport bench: {size_mb} MiB ...", file=sys.stderr, flush=True)
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
        for _ in range(repeats):  # interleaved, so each kind meets the same machine states
            for kind in KINDS:
                runs[kind].append(run_case(kind, size_mb, 1 if kind == "tcp" else streams))
        case: dict[str, float] = {"size_mb": size_mb}
        case |= _case_figures({kind: _medians(runs[kind]) for kind in KINDS})
        for kind, (aead, _) in AEADS.items():
            case[f"{PREFIX[kind]}cipher_bound_ratio"] = cipher_bound_ratio(
                case["tcp_mb_s"], case["tcp_cpu_mb_s"], rates[f"{aead}_seal"], rates[f"{aead}_open"]
            )
        case |= {"streams": streams, "repeats": repeats}
        cases.append(case)
        if not quiet:
            print(
                f"  noise {case['libp2p_mb_s']} MB/s ({case['ratio']}), tls {case['tls_mb_s']} "
                f"MB/s ({case['tls_ratio']}), tcp {case['tcp_mb_s']} MB/s, "
                f"receiver peak RSS {case['receiver_peak_rss_mb']} MB",
                file=sys.stderr,
                flush=True,
            )
    print_json(
        {
            "bench": "transport",
            "cases": cases,
            "aead_mb_s": rates,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
    )
    return 0


def _seed(role: str) -> bytes:
    return hashlib.sha256(f"p2pfed-bench-transport:{role}".encode()).digest()


def run_case(kind: str, size_mb: int, streams: int) -> dict[str, float]:
    """One measurement: a fresh receiver process, this process sends; returns figures."""
    import trio

    size = size_mb << 20
    # A fresh interpreter running only this module (not the CLI that started us), so its
    # peak RSS is the receiver's own: interpreter, py-libp2p, the payload buffer.
    child = subprocess.Popen(
        [sys.executable, "-m", __name__, "--receive", kind, str(size), str(streams)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _read_report(child, 60, f"the {kind} receiver process did not start within 60 s")
        payload = os.urandom(size)
        figures = trio.run(_send, kind, ready, payload, streams)
        report = _read_report(
            child, CASE_TIMEOUT_S, f"the {kind} receiver process did not report its figures"
        )
        figures["peak_rss_mb"] = report["peak_rss_kb"] / 1024
        figures["receiver_cpu_s"] = report["cpu_s"]
        # What the slower side's CPU time allows, had each side a core of its own: on a busy
        # machine wall-clock MB/s mostly measures the neighbours, this measures our code.
        figures["cpu_mb_s"] = size / 1e6 / max(figures["cpu_s"], report["cpu_s"], 1e-9)
        return figures
    except BrokenError:
        raise
    except Exception as exc:
        raise BrokenError(f"the {kind} case of {size_mb} MiB failed: {exc!r}") from exc
    finally:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def _read_report(child: subprocess.Popen[str], timeout: float, late: str) -> dict[str, Any]:
    """The receiver's next JSON line; ``BrokenError`` if it is late, failed or exited."""
    assert child.stdout is not None
    readable, _, _ = select.select([child.stdout], [], [], timeout)
    if not readable:
        raise BrokenError(late)
    line = child.stdout.readline()
    if not line:
        raise BrokenError(f"the receiver process exited with status {child.wait()}")
    report: dict[str, Any] = json.loads(line)
    if report.get("error"):
        raise BrokenError(f"the receiver failed: {report['error']}")
    return report


async def _send(kind: str, ready: dict[str, Any], payload: bytes, streams: int) -> dict[str, float]:
    import trio

    with trio.fail_after(CASE_TIMEOUT_S):
        if kind == "tcp":
            sock = await trio.open_tcp_stream("127.0.0.1", ready["port"])
            async with sock:
                with timed() as clock:
                    await sock.send_all(_LENGTH.pack(len(payload)))
                    view = memoryview(payload)
                    for offset in range(0, len(view), CHUNK):
                        await sock.send_all(view[offset : offset + CHUNK])
                    ack = await sock.receive_some(1)
            connect_ms = warm_connect_ms = 0.0
        else:
            from p2pfed.transport.libp2p import Libp2pTransport
            from p2pfed.transport.striping import send_striped

            receiver = ready["peer_id"]
            transport = Libp2pTransport(
                _seed("sender"),
                lambda peer: peer == receiver,
                peer_addrs={receiver: ready["addrs"]},
                security=(kind,),
            )
            async with transport:
                connects = []
                for _ in range(1 + WARM_CONNECTS):
                    with timed() as connect:
                        probe = await transport.open_stream(receiver, PING_PROTOCOL)
                    connects.append(connect.wall * 1000)
                    await probe.aclose()
                    await transport.disconnect(receiver)
                connect_ms, warm_connect_ms = connects[0], statistics.median(connects[1:])
                lanes = [await transport.open_stream(receiver, PROTOCOL) for _ in range(streams)]
                with timed() as clock:
                    await send_striped(lanes, payload)
                    ack = await lanes[0].receive_some(1)
                for lane in lanes:
                    await lane.aclose()
    if ack != b"\x01":
        raise RuntimeError(f"{kind} receiver answered {ack!r} instead of its acknowledgement")
    return {
        "mb_s": len(payload) / clock.wall / 1e6,
        "connect_ms": connect_ms,
        "warm_connect_ms": warm_connect_ms,
        "cpu_s": clock.cpu,
    }


async def _nothing(stream: Any) -> None:
    """Handler of the connect probe: admission is all it measures."""


def receiver_main(kind: str, size: int, streams: int, report: Report) -> None:
    """Body of a receiver process: receive one payload, report CPU time and peak RSS."""
    import trio

    logging.getLogger("p2pfed.libp2p").setLevel(logging.CRITICAL)
    try:
        cpu_s = trio.run(_receive, kind, size, streams, report)
    except Exception as exc:
        report({"error": repr(exc)})
        raise
    report({"peak_rss_kb": peak_rss_kb(), "cpu_s": cpu_s})


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB.

    Linux carries ``ru_maxrss`` over ``fork``/``exec`` (a child started by a 90 MB parent
    reports at least 90 MB however small it stays), so the peak of this process's own address
    space, ``VmHWM``, is read where it exists.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _report_on_stdout(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _receiver_cli(argv: list[str]) -> int:
    """``python -m p2pfed.bench.transport --receive KIND SIZE STREAMS`` (used by run_case)."""
    if len(argv) != 4 or argv[0] != "--receive" or argv[1] not in KINDS:
        print(f"usage: python -m p2pfed.bench.transport --receive {'|'.join(KINDS)} SIZE STREAMS")
        return 2
    receiver_main(argv[1], int(argv[2]), int(argv[3]), _report_on_stdout)
    return 0


async def _receive(kind: str, size: int, streams: int, report: Report) -> float:
    """Receive one payload; returns the CPU seconds spent from its first byte to the end."""
    buffer = bytearray(size)
    if kind == "tcp":
        return await _receive_tcp(buffer, report)
    return await _receive_libp2p(buffer, report, kind)


async def _receive_tcp(buffer: bytearray, report: Report) -> float:
    import trio

    done = trio.Event()
    cpu_start: list[float] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve(sock: trio.SocketStream) -> None:
        view = memoryview(buffer)
        cpu_start.append(time.process_time())
        header = b""
        while len(header) < _LENGTH.size:
            header += await sock.receive_some(_LENGTH.size - len(header))
        (length,) = _LENGTH.unpack(header)
        got = 0
        while got < length:
            chunk = await sock.receive_some(min(CHUNK, length - got))
            if not chunk:
                raise RuntimeError(f"sender stopped after {got} of {length} bytes")
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        await sock.send_all(b"\x01")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        report({"port": port})
        with trio.fail_after(CASE_TIMEOUT_S):
            await done.wait()
        cpu_end = time.process_time()
        nursery.cancel_scope.cancel()
    return cpu_end - cpu_start[0]


async def _receive_libp2p(buffer: bytearray, report: Report, security: str) -> float:
    import trio

    from p2pfed.transport.base import Stream
    from p2pfed.transport.libp2p import Libp2pTransport
    from p2pfed.transport.striping import StripedReceiver

    done = trio.Event()
    cpu_start: list[float] = []
    sender = Libp2pTransport(_seed("sender"), lambda _: True).local_peer
    collector = StripedReceiver(memoryview(buffer))

    async def on_stream(stream: Stream) -> None:
        # Every lane acknowledges once the whole payload is in; the sender reads lane 0's.
        if not cpu_start:
            cpu_start.append(time.process_time())
        await collector.receive_lane(stream)
        await collector.wait_complete()
        await stream.send_all(b"\x01")
        done.set()

    transport = Libp2pTransport(
        _seed("receiver"), lambda peer: peer == sender, security=(security,)
    )
    async with transport:
        transport.serve(PROTOCOL, on_stream)
        transport.serve(PING_PROTOCOL, _nothing)
        report({"peer_id": transport.local_peer, "addrs": list(transport.listen_addrs)})
        with trio.fail_after(CASE_TIMEOUT_S):
            await done.wait()
            cpu_end = time.process_time()
            await trio.sleep(0.05)  # let the acknowledgement leave before the host closes
    return cpu_end - cpu_start[0]


if __name__ == "__main__":
    sys.exit(_receiver_cli(sys.argv[1:]))
