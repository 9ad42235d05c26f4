"""Model synchronisation: a late or restarted peer fetches the current model from a member.

Theory of operation: every peer serves ``SYNC_PROTOCOL``. A request is one CONTROL frame
whose payload is a single byte (``STATUS`` or ``MODEL``); the answer is one CONTROL frame
with a ``ModelStatus`` (the last completed round and the SHA-256 of the shared weights),
followed, for ``MODEL``, by the weights as a wire tensor (digest-checked in transit). The
fetcher checks the received weights against the announced digest and shape before using
them. ``best_model`` asks every reachable member and takes the most advanced; unreachable or
misbehaving members are skipped with their reason.

Confidentiality: with ``serve_models`` off (secure gossip, where each member's model is its
own group's secure sum, which nobody else learns) a ``MODEL`` request is answered with a
REJECT frame and the status alone stays available, so a member can learn which round others
reached but no sum beyond its own group's. In ring modes every member of a round ends with
the same aggregate, so serving it hands out nothing a member of that round lacks.

Trust: peers are honest-but-curious in our threat model (docs/architecture.md). A node only
fetches when it is behind; among the most advanced members it prefers the weights digest
that most of them announce, so one member with a stale or damaged copy is outvoted, and it
checks the received weights against that digest.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import trio
from numpy.typing import NDArray

from p2pfed.errors import P2PFedError, ReasonCode, RemoteProtocolError
from p2pfed.transport.base import Stream, Transport
from p2pfed.wire import (
    Frame,
    FrameType,
    RejectedByPeer,
    decode_reject,
    encode_reject,
    read_frame,
    receive_tensor,
    send_tensor,
    write_frame,
)

log = logging.getLogger(__name__)

SYNC_PROTOCOL = "/p2pfed/model-sync/1.0.0"
STATUS = b"S"
MODEL = b"M"
NOT_SERVED = "this member does not serve its model: in secure gossip it is its own group's sum"
_STATUS = struct.Struct(">q32s")  # last completed round (-1: none yet), weights digest


def weights_digest(weights: NDArray[np.float32]) -> bytes:
    """SHA-256 of the shared weights as little-endian float32 (the model's identity)."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").tobytes()).digest()


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A member's last completed round and the digest of its weights after it."""

    round: int
    digest: bytes

    def __post_init__(self) -> None:
        if not -1 <= self.round < 1 << 62 or len(self.digest) != 32:
            raise ValueError("a model status needs a round ≥ -1 and a 32-byte digest")

    def encode(self) -> bytes:
        """Fixed 40-byte encoding."""
        return _STATUS.pack(self.round, self.digest)

    @classmethod
    def decode(cls, payload: bytes, peer: str) -> ModelStatus:
        """Parse a status; ``RemoteProtocolError(MALFORMED)`` if it is not one."""
        if len(payload) != _STATUS.size:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"model status from {peer} has {len(payload)} bytes", peer
            )
        round_, digest = _STATUS.unpack(payload)
        if round_ < -1:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"bad round in status from {peer}", peer
            )
        return cls(round_, digest)


@dataclass(frozen=True)
class FetchedModel:
    """Weights fetched from ``peer`` after its round ``round``."""

    peer: str
    round: int
    weights: NDArray[np.float32]


CurrentModel = Callable[[], tuple[int, NDArray[np.float32]]]
"""Returns (last completed round, shared weights) of the local peer."""


class ModelSync:
    """Serves this peer's model and fetches others'."""

    def __init__(
        self,
        transport: Transport,
        consortium: str,
        current: CurrentModel,
        size: int,
        timeout: float = 10.0,
        *,
        serve_models: bool = True,
    ) -> None:
        self.transport = transport
        self.serve_models = serve_models
        self.consortium = consortium
        self.current = current
        self.size = size
        self.timeout = timeout
        transport.serve(SYNC_PROTOCOL, self._handle)

    def _frame(self, round_: int, payload: bytes) -> Frame:
        return Frame(
            FrameType.CONTROL,
            self.consortium,
            max(round_, 0),
            self.transport.local_peer,
            0,
            payload,
        )

    async def _handle(self, stream: Stream) -> None:
        request = await read_frame(stream, timeout=self.timeout)
        if request.type is not FrameType.CONTROL or request.payload not in (STATUS, MODEL):
            raise RemoteProtocolError(
                ReasonCode.PROTOCOL_VIOLATION,
                "model-sync request is not STATUS or MODEL",
                stream.remote_peer,
            )
        round_, weights = self.current()
        if request.payload == MODEL and not self.serve_models:
            refusal = encode_reject(ReasonCode.PROTOCOL_VIOLATION, NOT_SERVED)
            frame = Frame(
                FrameType.REJECT,
                self.consortium,
                max(round_, 0),
                self.transport.local_peer,
                0,
                refusal,
            )
            await write_frame(stream, frame, timeout=self.timeout)
            return
        status = ModelStatus(round_, weights_digest(weights))
        await write_frame(stream, self._frame(round_, status.encode()), timeout=self.timeout)
        if request.payload == MODEL:
            await send_tensor(
                stream,
                np.ascontiguousarray(weights, dtype=np.float32),
                consortium=self.consortium,
                round=max(round_, 0),
                sender=self.transport.local_peer,
                seq=1,
                timeout=self.timeout,
            )

    async def _ask(self, peer: str, what: bytes) -> tuple[ModelStatus, NDArray[np.float32] | None]:
        stream = await self.transport.open_stream(peer, SYNC_PROTOCOL)
        async with stream:
            await write_frame(stream, self._frame(0, what), timeout=self.timeout)
            reply = await read_frame(stream, timeout=self.timeout)
            if reply.type is FrameType.REJECT:
                reason, message = decode_reject(reply.payload)
                raise RejectedByPeer(f"{peer} refused the request: {message}", reason)
            if reply.type is not FrameType.CONTROL:
                raise RemoteProtocolError(
                    ReasonCode.PROTOCOL_VIOLATION, f"{peer} answered with {reply.type.name}", peer
                )
            status = ModelStatus.decode(reply.payload, peer)
            if what == STATUS:
                return status, None
            weights = await receive_tensor(
                stream,
                local_peer=self.transport.local_peer,
                consortium=self.consortium,
                expected_shape=(self.size,),
                expected_dtype=np.float32,
                finite=True,
                timeout=self.timeout,
            )
            vector = np.asarray(weights, dtype=np.float32)
            if weights_digest(vector) != status.digest:
                raise RemoteProtocolError(
                    ReasonCode.DIGEST_MISMATCH,
                    f"{peer} sent weights that differ from its status",
                    peer,
                )
            return status, vector

    async def status_of(self, peer: str) -> ModelStatus:
        """``peer``'s last completed round and weights digest."""
        status, _ = await self._ask(peer, STATUS)
        return status

    async def probe_all(self, peers: Sequence[str], timeout: float) -> dict[str, ModelStatus]:
        """The status of every peer that answers within ``timeout`` (asked concurrently)."""
        statuses: dict[str, ModelStatus] = {}

        async def probe(peer: str) -> None:
            try:
                with trio.fail_after(timeout):
                    statuses[peer] = await self.status_of(peer)
            except (P2PFedError, trio.TooSlowError) as exc:
                log.debug("model sync: %s unavailable (%s)", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(probe, peer)
        return statuses

    async def fetch(self, peer: str) -> FetchedModel | None:
        """``peer``'s current model, or None if it cannot be had within the timeout."""
        try:
            with trio.fail_after(self.timeout * 4):
                status, weights = await self._ask(peer, MODEL)
        except (P2PFedError, trio.TooSlowError) as exc:
            log.info("model sync: fetching from %s failed (%s)", peer, exc)
            return None
        return None if weights is None else FetchedModel(peer, status.round, weights)

    async def best_model(self, peers: Sequence[str], newer_than: int) -> FetchedModel | None:
        """The model of the most advanced reachable peer, if it is past ``newer_than``."""
        statuses = await self.probe_all(peers, self.timeout)
        votes: dict[tuple[int, bytes], int] = {}
        for status in statuses.values():
            votes[(status.round, status.digest)] = votes.get((status.round, status.digest), 0) + 1

        def rank(peer: str) -> tuple[int, int]:
            s = statuses[peer]
            return (-s.round, -votes[(s.round, s.digest)])

        for peer in sorted(statuses, key=rank):
            if statuses[peer].round <= newer_than:
                break
            fetched = await self.fetch(peer)
            # The member may have finished another round since it was probed: any model
            # past ours will do (its digest was checked against its own announcement).
            if fetched is not None and fetched.round > newer_than:
                return fetched
        return None


__all__ = [
    "SYNC_PROTOCOL",
    "FetchedModel",
    "ModelStatus",
    "ModelSync",
    "weights_digest",
]
