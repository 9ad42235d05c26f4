"""``p2pfed bench transport``: bulk throughput of the libp2p transport against plain trio TCP.

Theory of operation: for every payload size, two cases run back to back — our
``Libp2pTransport`` (TCP + Noise + Yamux, roster-gated) and plain trio TCP, the baseline that
shares the machine's state at that moment. Each case starts a *fresh* receiver process
(multiprocessing "spawn"), so the receiver's peak RSS (``ru_maxrss``) belongs to that case
alone; the sender is this process. The receiver reads the payload into one preallocated
buffer (as a peer receiving a tensor would), then answers with one byte; the clock runs from
the sender's first payload byte to that answer, so connection set-up is excluded from MB/s and
reported separately (``libp2p_connect_ms``: connect, Noise, Yamux and first stream).

MB/s are 10^6 bytes per second of payload. Nothing is asserted: figures on a shared machine
are only comparable within one run, which is why the baseline runs in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import struct
import sys
import time
from typing import Any

NAME = "transport"
HELP = "Throughput of the libp2p transport (Noise+Yamux) vs plain trio TCP, separate processes."

DEFAULT_SIZES = (1, 16, 64, 256)
PROTOCOL = "/p2pfed/bench/bulk/1"
CHUNK = 1 << 20
CASE_TIMEOUT_S = 300.0
_LENGTH = struct.Struct(">Q")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options and set ``func``."""
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="payload sizes in MiB, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=1,
        help="libp2p streams the payload is striped across (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print only the JSON document (no progress lines)"
    )
    parser.set_defaults(func=run)


def parse_sizes(text: str) -> list[int]:
    """``"1,16,64"`` → ``[1, 16, 64]``; raises ``ConfigError`` naming a bad entry."""
    from p2pfed.errors import ConfigError

    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 4096:
            raise ConfigError(f"--sizes entry {part!r} is not a whole number of MiB in 1..4096")
        sizes.append(int(part))
    return sizes


def run(args: argparse.Namespace) -> int:
    """Run every case and print the JSON document."""
    from p2pfed.cli.util import print_json
    from p2pfed.errors import ConfigError

    sizes = parse_sizes(args.sizes)
    if not 1 <= args.streams <= 64:
        raise ConfigError(f"--streams must be in 1..64, got {args.streams}")
    cases = []
    for size_mb in sizes:
        if not args.json:
            print(f"transport bench: {size_mb} MiB ...", file=sys.stderr, flush=True)
        libp2p = run_case("libp2p", size_mb, args.streams)
        tcp = run_case("tcp", size_mb, 1)
        case = {
            "size_mb": size_mb,
            "libp2p_mb_s": round(libp2p["mb_s"], 1),
            "tcp_mb_s": round(tcp["mb_s"], 1),
            "ratio": round(libp2p["mb_s"] / tcp["mb_s"], 3),
            "receiver_peak_rss_mb": round(libp2p["peak_rss_mb"], 1),
            "tcp_receiver_peak_rss_mb": round(tcp["peak_rss_mb"], 1),
            "libp2p_connect_ms": round(libp2p["connect_ms"], 2),
            "streams": args.streams,
        }
        cases.append(case)
        if not args.json:
            print(
                f"  libp2p {case['libp2p_mb_s']} MB/s, tcp {case['tcp_mb_s']} MB/s, "
                f"ratio {case['ratio']}, receiver peak RSS {case['receiver_peak_rss_mb']} MB",
                file=sys.stderr,
                flush=True,
            )
    print_json(
        {
            "bench": "transport",
            "cases": cases,
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

    from p2pfed.errors import BrokenError

    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    size = size_mb << 20
    child = ctx.Process(
        target=receiver_main, args=(kind, size, streams, child_end), name=f"bench-recv-{kind}"
    )
    child.start()
    child_end.close()
    try:
        if not parent_end.poll(60):
            raise BrokenError(f"the {kind} receiver process did not start within 60 s")
        ready: dict[str, Any] = parent_end.recv()
        payload = os.urandom(size)
        figures = trio.run(_send, kind, ready, payload, streams)
        if not parent_end.poll(CASE_TIMEOUT_S):
            raise BrokenError(f"the {kind} receiver process did not report its figures")
        report: dict[str, Any] = parent_end.recv()
        if report.get("error"):
            raise BrokenError(f"the {kind} receiver failed: {report['error']}")
        figures["peak_rss_mb"] = report["peak_rss_kb"] / 1024
        return figures
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
        parent_end.close()


async def _send(kind: str, ready: dict[str, Any], payload: bytes, streams: int) -> dict[str, float]:
    import trio

    with trio.fail_after(CASE_TIMEOUT_S):
        if kind == "tcp":
            sock = await trio.open_tcp_stream("127.0.0.1", ready["port"])
            async with sock:
                start = time.perf_counter()
                await sock.send_all(_LENGTH.pack(len(payload)))
                view = memoryview(payload)
                for offset in range(0, len(view), CHUNK):
                    await sock.send_all(view[offset : offset + CHUNK])
                ack = await sock.receive_some(1)
                elapsed = time.perf_counter() - start
            connect_ms = 0.0
        else:
            from p2pfed.transport.libp2p import Libp2pTransport
            from p2pfed.transport.striping import send_striped

            receiver = ready["peer_id"]
            transport = Libp2pTransport(
                _seed("sender"),
                lambda peer: peer == receiver,
                peer_addrs={receiver: ready["addrs"]},
            )
            async with transport:
                t0 = time.perf_counter()
                lanes = [await transport.open_stream(receiver, PROTOCOL) for _ in range(streams)]
                connect_ms = (time.perf_counter() - t0) * 1000
                start = time.perf_counter()
                await send_striped(lanes, payload)
                ack = await lanes[0].receive_some(1)
                elapsed = time.perf_counter() - start
                for lane in lanes:
                    await lane.aclose()
    if ack != b"\x01":
        raise RuntimeError(f"{kind} receiver answered {ack!r} instead of its acknowledgement")
    return {"mb_s": len(payload) / elapsed / 1e6, "connect_ms": connect_ms}


def receiver_main(
    kind: str, size: int, streams: int, conn: multiprocessing.connection.Connection
) -> None:
    """Entry point of a receiver process: receive one payload, report peak RSS."""
    import trio

    try:
        trio.run(_receive, kind, size, streams, conn)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send({"peak_rss_kb": peak_kb})
    except BaseException as exc:
        conn.send({"error": repr(exc)})
        raise
    finally:
        conn.close()


async def _receive(
    kind: str, size: int, streams: int, conn: multiprocessing.connection.Connection
) -> None:
    import trio

    buffer = bytearray(size)
    done = trio.Event()
    if kind == "tcp":
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def serve(sock: trio.SocketStream) -> None:
            view = memoryview(buffer)
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
            conn.send({"port": port})
            with trio.fail_after(CASE_TIMEOUT_S):
                await done.wait()
            nursery.cancel_scope.cancel()
        return

    from p2pfed.transport.base import Stream
    from p2pfed.transport.libp2p import Libp2pTransport
    from p2pfed.transport.striping import StripedReceiver

    sender = Libp2pTransport(_seed("sender"), lambda _: True).local_peer
    collector = StripedReceiver(memoryview(buffer))

    async def on_stream(stream: Stream) -> None:
        # Every lane acknowledges once the whole payload is in; the sender reads lane 0's.
        await collector.receive_lane(stream)
        await collector.wait_complete()
        await stream.send_all(b"\x01")
        done.set()

    transport = Libp2pTransport(_seed("receiver"), lambda peer: peer == sender)
    async with transport:
        transport.serve(PROTOCOL, on_stream)
        conn.send({"peer_id": transport.local_peer, "addrs": list(transport.listen_addrs)})
        with trio.fail_after(CASE_TIMEOUT_S):
            await done.wait()
            await trio.sleep(0.05)  # let the acknowledgement leave before the host closes
