"""Anchors for ``bench allreduce``: gloo's all-reduce and a raw-TCP ring, same peers and bytes.

Theory of operation: what a user would otherwise run is ``torch.distributed``'s gloo
``all_reduce`` (no authentication, no encryption); what the hardware allows is the ring's
bandwidth bound on plain sockets. Both run here in n fresh processes on 127.0.0.1, each
started as ``python -m p2pfed.bench._baseline MODE …`` and printing one JSON line:

- ``gloo``: every rank all-reduces an M-byte float32 vector of ones (checked: every element
  must come back as n), timed from a barrier; a repeat's time is the slowest rank's
  (all-reduced with MAX), and the best repeat is kept.
- ``tcp``: every peer streams S = 2(n−1)/n·M bytes to its ring successor while reading S
  from its predecessor, all from one start instant (``time.monotonic`` is one clock per
  machine); the bound is the slowest peer's time: 2(n−1)M/(nB) for the links' rate B, with
  the machine's CPU shared by the n processes as in the ring itself.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from p2pfed.errors import BrokenError

_CHUNK = 1 << 20
_START_DELAY = 3.0  # seconds for every tcp peer to listen and connect before the instant


def free_ports(k: int) -> list[int]:
    """``k`` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(k)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _spawn(args: list[list[str]], timeout: float) -> list[dict[str, Any]]:
    """Run one child per argument list at once; their JSON lines, or ``BrokenError``."""
    cmd = [sys.executable, "-m", "p2pfed.bench._baseline"]
    children = [
        subprocess.Popen([*cmd, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for a in args
    ]
    outputs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for c in children:
                c.kill()
            raise BrokenError(f"a baseline process ran past {timeout:g} s") from None
        if child.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise BrokenError(f"a baseline process failed: {last}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def gloo_allreduce_s(n: int, mb: int, repeats: int, timeout: float = 600) -> float:
    """The best time of gloo ``all_reduce`` of ``mb`` MB over ``n`` processes."""
    (port,) = free_ports(1)
    args = [["gloo", str(r), str(n), str(port), str(mb), str(repeats)] for r in range(n)]
    results = _spawn(args, timeout)
    if not all(r["correct"] for r in results):
        raise BrokenError("gloo's all-reduce returned a wrong sum")
    return float(results[0]["seconds"])


def tcp_ring_bound_s(n: int, mb: int, repeats: int, timeout: float = 600) -> float:
    """The best (over ``repeats``) slowest-peer time to stream a ring's share over raw TCP."""
    best = math.inf
    share = int(2 * (n - 1) / n * mb * 1_000_000)
    for _ in range(repeats):
        ports = free_ports(n)
        start_at = time.monotonic() + _START_DELAY
        args = [
            ["tcp", str(r), str(n), ",".join(map(str, ports)), str(share), repr(start_at)]
            for r in range(n)
        ]
        best = min(best, max(float(r["seconds"]) for r in _spawn(args, timeout)))
    return best


def _gloo(rank: int, n: int, port: int, mb: int, repeats: int) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n)
    try:
        best, correct = math.inf, True
        for _ in range(repeats):
            vector = torch.ones(mb * 1_000_000 // 4, dtype=torch.float32)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(vector)
            took = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(took, op=dist.ReduceOp.MAX)
            best = min(best, float(took.item()))
            correct = correct and bool(torch.all(vector == n).item())
        return {"seconds": best, "correct": correct}
    finally:
        dist.destroy_process_group()


def _tcp(rank: int, n: int, ports: list[int], share: int, start_at: float) -> dict[str, Any]:
    listener = socket.create_server(("127.0.0.1", ports[rank]))
    successor = ports[(rank + 1) % n]
    deadline = time.monotonic() + _START_DELAY
    while True:
        try:
            out = socket.create_connection(("127.0.0.1", successor))
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    inbound, _ = listener.accept()
    payload = memoryview(bytes(_CHUNK))

    def send() -> None:
        left = share
        while left > 0:
            out.sendall(payload[: min(left, _CHUNK)])
            left -= min(left, _CHUNK)

    time.sleep(max(0.0, start_at - time.monotonic()))
    sender = threading.Thread(target=send)
    sender.start()
    buffer, got = bytearray(_CHUNK), 0
    while got < share:
        k = inbound.recv_into(buffer)
        if k == 0:
            raise BrokenError("the predecessor closed early")
        got += k
    sender.join()
    seconds = time.monotonic() - start_at
    for s in (out, inbound, listener):
        s.close()
    return {"seconds": seconds}


def main(argv: list[str]) -> None:
    """Child entry point: ``gloo RANK N PORT MB REPEATS`` or ``tcp RANK N PORTS SHARE START``."""
    mode, rank, n = argv[0], int(argv[1]), int(argv[2])
    if mode == "gloo":
        result = _gloo(rank, n, int(argv[3]), int(argv[4]), int(argv[5]))
    else:
        ports = [int(p) for p in argv[3].split(",")]
        result = _tcp(rank, n, ports, int(argv[4]), float(argv[5]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
