"""One secure-aggregation round with its n peers spread over k worker processes (bench only).

Theory of operation: each worker (a ``spawn``-ed process) hosts n/k ``SecAggPeer`` objects;
the parent routes encoded messages between workers in synchronous steps — it sends every
worker the bytes addressed to its peers, all workers handle theirs at the same time, and
what they send is routed in the next step — until nothing is in flight (a stage deadline
fires only if a pre-sum stage is stuck there, as in ``secagg.harness``). Masked vectors are
added to a per-worker running sum the moment they are made (the peer keeps none), the
parent adds the k partial sums and hands the total back, shared by every peer of a worker.
Then each worker unmasks for one of its peers and returns a SHA-256 of the result, which the
parent checks against the plain sum it computes itself.

Per-peer figures are CPU seconds (``time.thread_time``) around each of a peer's calls,
encoding what it sends included, making its input excluded: what one peer spends in a
round on its own machine, without the network. The leading underscore keeps this module
out of the ``p2pfed bench`` sub-commands; ``bench/secagg.py`` calls ``run_procs``.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import numpy as np

from p2pfed.bench._timing import timed
from p2pfed.errors import IntegrityError, RemoteProtocolError
from p2pfed.secagg.harness import make_identities, seeded_random_bytes
from p2pfed.secagg.messages import encode
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.primitives import UIntVector
from p2pfed.secagg.protocol import Outgoing, SecAggPeer
from p2pfed.secagg.state import PRE_SUM, Stage

T = TypeVar("T")
Packet = tuple[str, str, bytes]
CONSORTIUM = "bench"


def peer_names(n: int) -> list[str]:
    """The bench cohort's peer IDs."""
    return [f"peer-{i:04d}" for i in range(n)]


def base_vector(d: int, seed: int) -> UIntVector:
    """The random vector every bench input is derived from."""
    return np.random.default_rng(seed).integers(0, 1 << 22, d, dtype=np.uint32)


def make_input(base: UIntVector, index: int) -> UIntVector:
    """Peer ``index``'s input: ``base`` XOR a per-peer word (one pass, distinct per peer)."""
    return np.bitwise_xor(base, np.uint32((index * 0x9E3779B9) & 0xFFFFFFFF))


class _Worker:
    """The peers of one worker process and their bookkeeping."""

    def __init__(self, names: list[str], mine: list[str], d: int, seed: int) -> None:
        signers, identities = make_identities(names)
        config = SecAggConfig(CONSORTIUM, 1, d)
        self.peers = {
            n: SecAggPeer(config, n, signers[n], identities, seeded_random_bytes(seed, n))
            for n in mine
        }
        self.index = {n: i for i, n in enumerate(names)}
        self.base = base_vector(d, seed)
        self.cpu = dict.fromkeys(mine, 0.0)
        self.partial: UIntVector | None = None
        self.streamed: list[str] = []
        self.refused = 0
        self.total: UIntVector | None = None

    def call(self, name: str, step: Callable[[], list[Outgoing]]) -> list[Packet]:
        start = time.thread_time()
        out = step()
        cache: dict[int, bytes] = {}  # a broadcast is encoded once
        packets = []
        for item in out:
            data = cache.get(id(item.message))
            if data is None:
                data = cache[id(item.message)] = encode(item.message)
            packets.append((name, item.to, data))
        self.cpu[name] += time.thread_time() - start
        peer = self.peers[name]
        if peer.stage is Stage.MASKED_INPUT and peer.masked_vector is not None:
            vector, peer.masked_vector = peer.masked_vector, None
            if self.partial is None:
                self.partial = vector
            else:
                np.add(self.partial, vector, out=self.partial)
            self.streamed.append(name)
        return packets

    def make(self, name: str) -> Callable[[], UIntVector]:
        def draw() -> UIntVector:
            start = time.thread_time()
            vector = make_input(self.base, self.index[name])
            self.cpu[name] -= time.thread_time() - start  # the bench's input, not the peer's work
            return vector

        return draw

    def handle(self, command: tuple[Any, ...]) -> Any:
        match command:
            case ("start",):
                return self._each(lambda p: lambda: p.start(self.make(p.me), copy=False))
            case ("deliver", batch):
                out: list[Packet] = []
                for sender, to, data in batch:
                    peer = self.peers[to]
                    if peer.stage is Stage.ABORTED:
                        continue
                    try:
                        out += self.call(to, partial(peer.receive_bytes, sender, data))
                    except RemoteProtocolError:
                        self.refused += 1
                return out, self._stages()
            case ("deadline", stage):
                live = [p for p in self.peers.values() if p.stage.value == stage]
                return self._each(lambda p: p.deadline, live)
            case ("partial",):
                summed, self.partial = self.partial, None
                return summed, self.streamed
            case ("sum", total, survivors):
                self.total = total
                live = [p for p in self.peers.values() if p.stage is Stage.MASKED_INPUT]
                return self._each(
                    lambda p: lambda: p.receive_sum(total, survivors, shared=True), live
                )
            case ("result",):
                done = [n for n, p in self.peers.items() if p.stage is Stage.DONE]
                if not done:
                    return None
                start = time.thread_time()
                result = self.peers[done[0]].result()
                unmask = time.thread_time() - start
                return done[0], hashlib.sha256(result.tobytes()).hexdigest(), unmask
            case ("stats",):
                return self.cpu, self.refused, self._stages()
        raise ValueError(f"unknown worker command {command[0]!r}")

    def _each(self, make: Callable[[SecAggPeer], Any], peers: Any = None) -> Any:
        out: list[Packet] = []
        for peer in self.peers.values() if peers is None else peers:
            out += self.call(peer.me, make(peer))
        return out, self._stages()

    def _stages(self) -> dict[str, str]:
        return {n: p.stage.value for n, p in self.peers.items()}


def _worker_main(conn: Connection, names: list[str], mine: list[str], d: int, seed: int) -> None:
    worker = _Worker(names, mine, d, seed)
    conn.send("ready")
    while True:
        command = conn.recv()
        if command == ("stop",):
            return
        conn.send(worker.handle(command))


def _broadcast(pipes: list[Connection], commands: list[tuple[Any, ...]]) -> list[Any]:
    for pipe, command in zip(pipes, commands, strict=True):
        pipe.send(command)
    return [pipe.recv() for pipe in pipes]


def _route(
    pipes: list[Connection], owner: dict[str, int], replies: list[Any], stages: dict[str, str]
) -> None:
    """Deliver what ``replies`` sent, and what that sends, until nothing is in flight."""
    while True:
        batches: list[list[Packet]] = [[] for _ in pipes]
        for out, seen in replies:
            stages.update(seen)
            for packet in out:
                batches[owner[packet[1]]].append(packet)
        if not any(batches):
            return
        replies = _broadcast(pipes, [("deliver", b) for b in batches])


def run_procs(n: int, d: int, procs: int, seed: int) -> dict[str, Any]:
    """Run one round of n peers over ``procs`` worker processes; the figures as JSON."""
    names = peer_names(n)
    groups = [names[i::procs] for i in range(procs)]
    owner = {name: w for w, group in enumerate(groups) for name in group}
    context = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    for group in groups:
        parent_end, child_end = context.Pipe()
        worker = context.Process(
            target=_worker_main, args=(child_end, names, group, d, seed), daemon=True
        )
        worker.start()
        pipes.append(parent_end)
        workers.append(worker)
    try:
        for pipe in pipes:
            pipe.recv()  # "ready": imports and identities are not part of the round
        stages: dict[str, str] = {}
        with timed() as wall:
            _route(pipes, owner, _broadcast(pipes, [("start",)] * procs), stages)
            pre_sum = [s.value for s in PRE_SUM]
            while waiting := [s for s in stages.values() if s in pre_sum]:
                earliest = min(waiting, key=pre_sum.index)
                _route(pipes, owner, _broadcast(pipes, [("deadline", earliest)] * procs), stages)
            total: UIntVector | None = None
            survivors: list[str] = []
            for partial, streamed in _broadcast(pipes, [("partial",)] * procs):
                survivors += streamed
                if partial is not None:
                    total = partial if total is None else np.add(total, partial, out=total)
            if total is None:
                raise IntegrityError("secagg bench: no peer of the multi-process run masked")
            command = ("sum", total, frozenset(survivors))
            _route(pipes, owner, _broadcast(pipes, [command] * procs), stages)
            results = _broadcast(pipes, [("result",)] * procs)
        stats = _broadcast(pipes, [("stats",)] * procs)
        for pipe in pipes:
            pipe.send(("stop",))
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    base = base_vector(d, seed)
    plain = np.zeros(d, dtype=np.uint32)
    for i in range(n):
        np.add(plain, make_input(base, i), out=plain)
    expected = hashlib.sha256(plain.tobytes()).hexdigest()
    unmaskers = [r for r in results if r is not None]
    if len(survivors) != n or not unmaskers or any(r[1] != expected for r in unmaskers):
        raise IntegrityError("secagg bench: the multi-process run did not rebuild the plain sum")
    cpu = [c for per_worker, _, _ in stats for c in per_worker.values()]
    unmask = [r[2] for r in unmaskers]
    return {
        "procs": procs,
        "wall_s": round(wall.wall, 3),
        "peer_cpu_s_median": round(statistics.median(cpu), 4),
        "peer_cpu_s_max": round(max(cpu), 4),
        "unmask_cpu_s_median": round(statistics.median(unmask), 4),
        "peer_round_cpu_s": round(statistics.median(cpu) + statistics.median(unmask), 4),
        "refused": sum(refused for _, refused, _ in stats),
        "exact": True,
    }
