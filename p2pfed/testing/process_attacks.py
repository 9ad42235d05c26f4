"""Attacks played by real peer processes (``ProcessGroup`` tasks).

They let a test prove a protection over real processes and sockets, not in one process.

``equivocate``: every child runs the real secure-aggregation driver (``drive_secagg``) over
its libp2p transport, but the summation step is the attacker's: each child streams its masked
words to the attacker process, which waits for all of them and answers each child with the
total over the survivor set *it chose for that child* (task ``split``: child index → the
indices it is told). Each child reports where its round ended and, for the attacker, how many
reveals reached it: with the consistency round none may.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import trio

from p2pfed.collectives.round import ControlService
from p2pfed.collectives.secure import SECAGG_PROTOCOL, drive_secagg
from p2pfed.errors import ConfigError
from p2pfed.secagg import SecAggConfig, SecAggPeer
from p2pfed.secagg.messages import MessageKind

LIAR_PROTOCOL = "/p2pfed/test/lying-sum/1.0.0"
_TIMEOUT_S = 30.0


class LyingSummation:  # pragma: no cover - runs in subprocesses
    """The attacker's side: collects every masked vector, answers each with its chosen set."""

    def __init__(self, peers: Sequence[str], split: Mapping[str, frozenset[str]], words: int):
        self.peers, self.split, self.words = list(peers), split, words
        self.vectors: dict[str, np.ndarray] = {}
        self.complete = trio.Event()

    def add(self, peer: str, vector: np.ndarray) -> None:
        self.vectors[peer] = vector
        if len(self.vectors) == len(self.peers):
            self.complete.set()

    async def told(self, peer: str) -> tuple[np.ndarray, frozenset[str]]:
        with trio.fail_after(_TIMEOUT_S):
            await self.complete.wait()
        chosen = self.split[peer]
        total = np.zeros(self.words, dtype=np.uint32)
        for p in sorted(chosen):
            total += self.vectors[p]
        return total, chosen

    async def serve(self, stream: Any) -> None:
        async with stream:
            data = await stream.receive_exactly(4 * self.words)
            self.add(stream.remote_peer, np.frombuffer(data, dtype="<u4").astype(np.uint32))
            total, chosen = await self.told(stream.remote_peer)
            names = [self.peers.index(p) for p in sorted(chosen)]
            await stream.send_all(struct.pack(">H", len(names)) + bytes(names))
            await stream.send_all(total.astype("<u4").tobytes())


async def run_equivocation(
    runner: Any, task: Mapping[str, Any]
) -> dict[str, Any]:  # pragma: no cover
    """One child's part in the ``equivocate`` task; see the module docstring."""
    if "secure" in runner._services:
        raise ConfigError("the equivocate task needs a group that ran no secure round")
    peers, me, words = runner.peers, runner.me, int(task["words"])
    attacker = peers[int(task["attacker"])]
    split = {
        peers[int(i)]: frozenset(peers[int(j)] for j in told) for i, told in task["split"].items()
    }
    config = SecAggConfig(
        runner.consortium,
        int(task["round"]),
        words,
        threshold=int(task["threshold"]),
        min_survivors=int(task["min_survivors"]),
    )
    peer = SecAggPeer(config, me, runner.signer, runner.keys)
    channel = ControlService(
        runner.transport, runner.consortium, timeout=10.0, protocol=SECAGG_PROTOCOL
    )
    liar = None
    if me == attacker:
        liar = LyingSummation(peers, split, words)
        runner.transport.serve(LIAR_PROTOCOL, liar.serve)

    async def summation(vector: np.ndarray) -> tuple[np.ndarray, frozenset[str]]:
        if liar is not None:
            liar.add(me, vector.copy())
            return await liar.told(me)
        stream = await runner.transport.open_stream(attacker, LIAR_PROTOCOL)
        async with stream:
            await stream.send_all(vector.astype("<u4").tobytes())
            (count,) = struct.unpack(">H", await stream.receive_exactly(2))
            chosen = frozenset(peers[i] for i in await stream.receive_exactly(count))
            total = np.frombuffer(await stream.receive_exactly(4 * words), dtype="<u4")
            return total.astype(np.uint32), chosen

    rng = np.random.default_rng(int(task["seed"]) + runner.index)
    inputs = rng.integers(0, 2**20, words, dtype=np.uint32)
    with trio.fail_after(_TIMEOUT_S * 2):
        await drive_secagg(
            peer, inputs, channel, channel.open_round(config.round), config.round, 5.0, summation
        )
    return {
        "stage": peer.stage.value,
        "abort_reason": peer.abort_reason,
        "reveals_received": len(peer._inbox[MessageKind.REVEAL]),
        "quorum": peer.plan.quorum,
    }
