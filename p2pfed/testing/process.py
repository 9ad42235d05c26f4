"""Collectives between real peer processes over libp2p on 127.0.0.1 (tests and benchmarks).

Theory of operation: ``ProcessGroup(n)`` starts n Python processes running ``peer_main``.
Each builds a ``Libp2pTransport`` from its own seed on an ephemeral loopback port and prints
one JSON line with its peer ID, addresses and Ed25519 public key. The parent sends every
child the whole address book (one JSON line), which becomes each child's roster gate, then
runs tasks: ``run(task)`` writes the task to every child at once and collects one JSON result
line from each. Tasks name what to do — a bare ring all-reduce, a full round (agreement and
retries), a secure round, gossip rounds, a bandwidth probe — and carry the seeds from which
each child draws its own vector, so the parent can recompute the exact expected sums.

Faults are real: a task may name a peer that calls ``os._exit`` at its k-th outgoing chunk,
so the survivors see a process vanish with its sockets. Each child's stderr goes to a file
in the group's temporary directory, reported if a child fails. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import trio

import topologies
from p2pfed.collectives.agreement_state import AgreementTiming
from p2pfed.collectives.faults import Fault, FaultPlan
from p2pfed.collectives.gossip_driver import GossipConfig, GossipService
from p2pfed.collectives.ring import ring_order
from p2pfed.collectives.ring_driver import RingConfig, RingService
from p2pfed.collectives.round import RingRound
from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.secure_gossip import SecureGossipService
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import BrokenError, ConfigError
from p2pfed.identity.keys import Identity
from p2pfed.testing import process_attacks
from p2pfed.transport.libp2p import Libp2pTransport

Task = dict[str, Any]
Result = dict[str, Any]


def peer_seed(tag: str, index: int) -> bytes:
    """The 32-byte identity seed of peer ``index`` of a group tagged ``tag``."""
    return hashlib.sha256(f"p2pfed-collectives-process:{tag}:{index}".encode()).digest()


def task_vector(task: Mapping[str, Any], index: int) -> npt.NDArray[Any]:
    """The vector peer ``index`` contributes to ``task`` (recomputable by the parent)."""
    rng = np.random.default_rng([int(task["seed"]), index])
    words = int(task["words"])
    dtype = np.dtype(task.get("dtype", "float32"))
    if dtype.kind == "u":
        top = 1 << (8 * dtype.itemsize)
        return rng.integers(0, top, words, dtype=np.uint64).astype(dtype)
    return rng.uniform(-1.0, 1.0, words).astype(dtype)


def digest(array: npt.NDArray[Any]) -> str:
    """SHA-256 of an array's bytes (results are compared by digest, not shipped)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class _Child:
    def __init__(self, index: int, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.index = index
        self.proc = proc
        self.log_path = log_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, payload: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(payload) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # a dead child is reported by its missing result

    def receive(self, deadline: float) -> dict[str, Any] | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed

    def stderr_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class ProcessGroup:
    """n peer processes on loopback; a context manager that always reaps its children."""

    def __init__(self, n: int, *, tag: str = "group", start_timeout: float = 60.0) -> None:
        if not 2 <= n <= 64:
            raise ConfigError(f"a process group needs 2..64 peers, got {n}")
        self.n = n
        self.tag = tag
        self.start_timeout = start_timeout
        self.peers: list[str] = []
        self.public_keys: dict[str, str] = {}
        self._children: list[_Child] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="p2pfed-procs-")

    def __enter__(self) -> Self:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for i in range(self.n):
            log_path = Path(self._tmp.name) / f"peer{i}.log"
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "p2pfed.testing.process", self.tag, str(i)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=env,
                )
            self._children.append(_Child(i, proc, log_path))
        try:
            deadline = time.monotonic() + self.start_timeout
            hello = []
            for child in self._children:
                got = child.receive(deadline)
                if got is None or got.get("event") != "listening":
                    raise BrokenError(
                        f"peer process {child.index} did not start: {child.stderr_tail()}"
                    )
                hello.append(got)
            self.peers = [h["peer"] for h in hello]
            self.public_keys = {h["peer"]: h["public_key"] for h in hello}
            book = {
                "peers": self.peers,
                "addrs": {h["peer"]: h["addrs"] for h in hello},
                "public_keys": self.public_keys,
            }
            for child in self._children:
                child.send(book)
        except BaseException:
            self.close()
            raise
        return self

    def run(self, task: Task, *, timeout: float = 120.0) -> list[Result | None]:
        """Run ``task`` on every live child at once; each child's result (None if it died)."""
        for child in self._children:
            if child.proc.poll() is None:
                child.send(task)
        deadline = time.monotonic() + timeout
        results: list[Result | None] = []
        for child in self._children:
            got = child.receive(deadline)
            if got is not None and got.get("event") == "error":
                raise BrokenError(f"peer {child.index} failed: {got.get('error')}")
            results.append(got)
        return results

    def alive(self) -> list[bool]:
        """Which children are still running."""
        return [child.proc.poll() is None for child in self._children]

    def stderr(self, index: int) -> str:
        """The tail of child ``index``'s stderr (for diagnostics)."""
        return self._children[index].stderr_tail()

    def close(self) -> None:
        """Tell children to exit, then kill any that linger."""
        for child in self._children:
            child.send({"kind": "exit"})
        deadline = time.monotonic() + 10
        for child in self._children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            for pipe in (child.proc.stdin, child.proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self._tmp.cleanup()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- child side


async def _child(tag: str, index: int) -> None:  # pragma: no cover - runs in subprocesses
    seed = peer_seed(tag, index)
    admitted: set[str] = set()
    transport = Libp2pTransport(seed, lambda peer: peer in admitted)

    def emit(payload: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    async def read_line() -> dict[str, Any]:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return {"kind": "exit"}
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    signer = Identity.from_seed(seed)
    async with transport:
        emit(
            {
                "event": "listening",
                "peer": transport.local_peer,
                "addrs": list(transport.listen_addrs),
                "public_key": signer.public_key.hex(),
            }
        )
        book = await read_line()
        peers: list[str] = book["peers"]
        admitted.update(peers)
        for peer, addrs in book["addrs"].items():
            if peer != transport.local_peer:
                transport.set_peer_addrs(peer, addrs)
        keys = {p: bytes.fromhex(k) for p, k in book["public_keys"].items()}
        runner = _TaskRunner(transport, peers, index, seed, signer, keys)
        while True:
            task = await read_line()
            if task["kind"] == "exit":
                break
            try:
                result = await runner.run(task)
            except Exception as exc:
                emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
                continue
            emit({"event": "result", **result})


TaskHandler = Callable[[Mapping[str, Any]], Awaitable[Result]]


class _TaskRunner:  # pragma: no cover - runs in subprocesses
    """One child's services and task dispatch: one method per task kind."""

    def __init__(
        self,
        transport: Any,
        peers: Sequence[str],
        index: int,
        seed: bytes,
        signer: Any,
        keys: Mapping[str, bytes],
    ) -> None:
        self.transport = transport
        self.peers = list(peers)
        self.index = index
        self.me = transport.local_peer
        self.seed = seed
        self.signer = signer
        self.keys = dict(keys)
        self.cohort_signer = Ed25519CohortSigner(seed, keys)
        self.timing = AgreementTiming(collect_window=3.0, takeover_timeout=8.0, commit_timeout=30.0)
        self.ring_config = RingConfig(timeout=10.0)
        self.consortium = "process-group"
        self.ring = RingService(transport, self.consortium, accept_timeout=30.0)
        self._services: dict[str, Any] = {}
        self._prepared: dict[tuple[int, int, str], npt.NDArray[Any]] = {}
        self._handlers: dict[str, TaskHandler] = {
            "prepare": self._prepare,
            "ring": self._ring,
            "round": self._round,
            "secure": self._secure,
            "gossip": self._gossip,
            "secure_gossip": self._gossip,
            "equivocate": lambda task: process_attacks.run_equivocation(self, task),
            "bandwidth": self._bandwidth,
        }
        transport.serve(BANDWIDTH_PROTOCOL, self._serve_bandwidth)

    def _ring_round(self, timing: Any, ring_config: Any, task: Mapping[str, Any]) -> Any:
        # One transport serves each protocol once: every ring user shares one RingService
        # and one RingRound (the first task that needs it fixes its timing).
        runner = self._services.get("round")
        if runner is None:
            runner = RingRound(
                self.transport,
                self.consortium,
                1,
                self.peers,
                self.cohort_signer,
                timing=timing,
                ring_config=ring_config,
                fault=self._fault(task),
                ring=self.ring,
            )
            self._services["round"] = runner
        return runner

    def _vector(self, task: Mapping[str, Any]) -> npt.NDArray[Any]:
        key = (int(task["seed"]), int(task["words"]), str(task.get("dtype", "float32")))
        cached = self._prepared.pop(key, None)
        return cached if cached is not None else task_vector(task, self.index)

    def _fault(self, task: Mapping[str, Any]) -> Any:
        if task.get("kill") == self.index:
            return FaultPlan(Fault.CRASH, at=int(task.get("kill_at", 0)), on_crash=_die)
        return None

    async def run(self, task: Mapping[str, Any]) -> Result:
        """Run one task; its result with the task kind, this peer and the time it took."""
        kind = task["kind"]
        handler = self._handlers.get(kind)
        if handler is None:
            raise ConfigError(f"unknown task kind {kind!r}")
        if "start_at" in task:
            # A common start instant (time.monotonic is one clock for every process on the
            # machine), so that stdin delivery skew between children is not timed.
            await trio.sleep(max(0.0, float(task["start_at"]) - time.monotonic()))
        start = trio.current_time()
        out: Result = {"task": kind, "peer": self.me, "index": self.index}
        out |= await handler(task)
        out["time_s"] = trio.current_time() - start
        return out

    async def _prepare(self, task: Mapping[str, Any]) -> Result:
        # Draw the vector of the task that follows now, so peers start it together: a
        # peer still drawing 64 MB while its predecessor streams to it would stall the
        # stream (py-libp2p's Yamux resets a stream whose reader pauses for 5 s).
        inner = dict(task["task"])
        key = (int(inner["seed"]), int(inner["words"]), str(inner.get("dtype", "float32")))
        self._prepared[key] = task_vector(inner, self.index)
        return {}

    async def _ring(self, task: Mapping[str, Any]) -> Result:
        vector = self._vector(task)
        order = ring_order(self.consortium, 1, int(task["round"]), self.peers)
        self.ring.fault = self._fault(task)
        config = RingConfig(chunk_bytes=int(task.get("chunk_bytes", 256 * 1024)), timeout=30)
        result = await self.ring.all_reduce(vector, order, round=int(task["round"]), config=config)
        return {
            "digest": digest(result.vector),
            "payload_sent": result.counts.payload_sent,
            "framing_sent": result.counts.framing_sent,
            "head": [float(v) for v in result.vector[:4]],
        }

    async def _round(self, task: Mapping[str, Any]) -> Result:
        timing = AgreementTiming(
            collect_window=float(task.get("collect_window", 3.0)),
            takeover_timeout=float(task.get("takeover_timeout", 8.0)),
            commit_timeout=30.0,
        )
        runner = self._ring_round(
            timing, RingConfig(timeout=float(task.get("ring_timeout", 10.0))), task
        )
        outcome = await runner.all_reduce(self._vector(task), int(task["round"]))
        return {
            "phase": outcome.phase.value,
            "cohort": list(outcome.cohort or ()),
            "attempts": outcome.attempts,
            "digest": digest(outcome.result.vector) if outcome.result is not None else None,
        }

    async def _secure(self, task: Mapping[str, Any]) -> Result:
        secure = self._services.get("secure") or SecureRingRound(
            self.transport,
            self.consortium,
            1,
            self.keys,
            self.signer,
            self.cohort_signer,
            stage_timeout=20.0,
            ring_round=self._ring_round(self.timing, self.ring_config, task),
        )
        self._services["secure"] = secure
        outcome = await secure.aggregate(self._vector(task), int(task["round"]))
        ring = outcome.ring.result if outcome.ring is not None else None
        return {
            "ok": outcome.ok,
            "stage": outcome.stage.value,
            "survivors": sorted(outcome.survivors),
            "digest": digest(outcome.result) if outcome.result is not None else None,
            "bytes_sent": ring.bytes_sent if ring is not None else None,
        }

    def _gossip_service(self, kind: str, topo: topologies.Topology) -> Any:
        service = self._services.get(kind)
        if service is not None:
            return service
        if kind == "gossip":
            service = GossipService(
                self.transport,
                self.consortium,
                self.peers,
                topo,
                config=GossipConfig(deadline=20.0, timeout=10.0),
            )
        else:
            service = SecureGossipService(
                self.transport,
                self.consortium + "-gossip",
                self.peers,
                topo,
                self.keys,
                self.signer,
                stage_timeout=20.0,
                rng=np.random.default_rng(self.index),
            )
        self._services[kind] = service
        return service

    async def _gossip(self, task: Mapping[str, Any]) -> Result:
        topo = topologies.build(task["topology"], len(self.peers))
        x = self._vector(task).astype(np.float64)
        service = self._gossip_service(task["kind"], topo)
        first = int(task.get("first_round", 0))
        for t in range(first, first + int(task["rounds"])):
            x = (await service.sync_round(t, x)).vector
        return {"vector": [float(v) for v in x]}

    async def _bandwidth(self, task: Mapping[str, Any]) -> Result:
        successor = self.peers[(self.peers.index(self.me) + 1) % len(self.peers)]
        if "order_round" in task:
            order = ring_order(self.consortium, 1, int(task["order_round"]), self.peers)
            successor = order[(order.index(self.me) + 1) % len(order)]
        size = int(task["bytes"])
        stream = await self.transport.open_stream(successor, BANDWIDTH_PROTOCOL)
        block = bytes(256 * 1024)
        sent = 0
        begin = trio.current_time()
        async with stream:
            while sent < size:
                part = block[: min(len(block), size - sent)]
                await stream.send_all(part)
                sent += len(part)
            await stream.send_eof()
            await stream.receive_exactly(1)
        return {"bytes": sent, "seconds": trio.current_time() - begin}

    async def _serve_bandwidth(self, stream: Any) -> None:
        while await stream.receive_some(1 << 20):
            pass
        await stream.send_all(b"\x01")


BANDWIDTH_PROTOCOL = "/p2pfed/bench/stream/1.0.0"


def _die() -> None:  # pragma: no cover - kills the process on purpose
    sys.stdout.flush()
    os._exit(17)


def peer_main(argv: Sequence[str]) -> int:  # pragma: no cover - runs in subprocesses
    """Entry point of a peer process: ``python -m p2pfed.testing.process TAG INDEX``."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tag, index = argv[0], int(argv[1])
    trio.run(_child, tag, index)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(peer_main(sys.argv[1:]))
