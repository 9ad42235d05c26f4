"""Model synchronisation: a late or restarted peer fetches the current model from a member.

Theory of operation: every peer serves ``MODEL_SYNC_PROTOCOL``. A request is one CONTROL frame
whose payload is a single byte (``STATUS`` or ``MODEL``); the answer is one CONTROL frame
with a ``ModelStatus`` (the last completed round, the SHA-256 of the shared weights, the
round the member starts next and when) and, when it has one, the commit certificate of those
weights, followed, for ``MODEL``, by the weights as a wire tensor (digest-checked in
transit). The fetcher checks the received weights against the announced digest and shape
before using them. ``best_model`` asks every reachable member and takes the most advanced
certified model; unreachable or misbehaving members are skipped with their reason.

Confidentiality: with ``serve_models`` off (secure gossip, where each member's model is its
own group's secure sum, which nobody else learns) a ``MODEL`` request is answered with a
REJECT frame and the status alone stays available, so a member can learn which round others
reached but no sum beyond its own group's. In ring modes every member of a round ends with
the same aggregate, so serving it hands out nothing a member of that round lacks.

Trust: a member's key may be stolen, so nothing a single member says about its model is
believed. A status carries the member's commit certificate (``p2pfed.node.certificates``)
for the weights it holds; the fetcher adopts weights only under a certificate that
``CertificatePolicy.check`` accepts, for exactly the announced round and digest, and ranks
candidates by that certified round, never by the claimed one. A member that claims a round
its certificate does not cover, serves no or a bad certificate, weights that differ from it
or that are not finite, is refused, named once per round (``refusals``, ``on_refusal``) and
left alone for a doubling back-off, so a bad model is not fetched again in a loop. Among the
most advanced certified models the digest that most members announce wins.
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

from p2pfed.collectives.messages import ModelBase
from p2pfed.errors import P2PFedError, ReasonCode, RemoteProtocolError
from p2pfed.node.certificates import CertificatePolicy, CommitCertificate
from p2pfed.transport.base import Stream, Transport
from p2pfed.wire import (
    Frame,
    FrameType,
    RejectedByPeer,
    decode_reject,
    encode_reject,
    receive_tensor,
    send_tensor,
    write_frame,
)
from p2pfed.wire.exchange import read_one_frame

log = logging.getLogger(__name__)

MODEL_SYNC_PROTOCOL = "/p2pfed/model-sync/3.0.0"
STATUS = b"S"
MODEL = b"M"
NOT_SERVED = "this member does not serve its model: in secure gossip it is its own group's sum"
# Last completed round (-1: none yet), weights digest, the round it starts next, whether it
# is in a round now, and the wall-clock time it starts the next at (0: not waiting for one).
_STATUS = struct.Struct(">q32sqBd")


def weights_digest(weights: NDArray[np.float32]) -> bytes:
    """SHA-256 of the shared weights as little-endian float32 (the model's identity)."""
    # Hashed through the buffer protocol: ``tobytes`` would copy the whole model first.
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").data).digest()


class DigestCache:
    """``weights_digest`` of the model being served, computed once per model version.

    Every member probes every other's status each round: hashing 40 MB of weights per probe
    was most of a 10 M-parameter round's model-sync time. A version is the round *and* the
    array object (held here, so its id cannot be reused): the peer replaces its weights array
    whenever the model changes, never writes into it. Two versions are kept: a round's new
    model is hashed for its certificate while the others still probe the old one.
    """

    KEEP = 2

    def __init__(self, digest: Callable[[NDArray[np.float32]], bytes] = weights_digest) -> None:
        self._digest = digest
        self._held: list[tuple[int, NDArray[np.float32], bytes]] = []

    def __call__(self, round_: int, weights: NDArray[np.float32]) -> bytes:
        """The digest of ``weights`` as of ``round_``."""
        for held_round, held, value in self._held:
            if held_round == round_ and held is weights:
                return value
        value = self._digest(weights)
        self._held = [*self._held[1 - self.KEEP :], (round_, weights, value)]
        return value


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A member's last completed round, the digest of its weights after it, and where it is.

    ``next_round``: the round number it starts next (None: ``round + 1``); ``running``: it
    is inside a round now (numbered ``next_round - 1``); ``starts_at``: the wall-clock time
    it waits for to start the next (a slot boundary after a miss; 0: none). Unsigned, like
    the rest of the status: a starting member trusts no single member's claim
    (``CatchUp.join_in_step``).
    """

    round: int
    digest: bytes
    next_round: int | None = None
    running: bool = False
    starts_at: float = 0.0

    def __post_init__(self) -> None:
        if not -1 <= self.round < 1 << 62 or len(self.digest) != 32:
            raise ValueError("a model status needs a round ≥ -1 and a 32-byte digest")
        if not self.round < self.starts_next < 1 << 62:
            raise ValueError("a model status's next round must follow its completed round")
        if not 0.0 <= self.starts_at < float("inf"):
            raise ValueError("a model status's start time must be finite and ≥ 0")

    @property
    def starts_next(self) -> int:
        """The round number this member starts next."""
        return self.round + 1 if self.next_round is None else self.next_round

    @property
    def retrying(self) -> bool:
        """It missed rounds since its model's: it starts rounds at the shared slot boundaries."""
        current = self.starts_next - 1 if self.running else self.starts_next
        return current > self.round + 1

    def encode(self) -> bytes:
        """Fixed 57-byte encoding."""
        return _STATUS.pack(self.round, self.digest, self.starts_next, self.running, self.starts_at)

    @classmethod
    def decode(cls, payload: bytes, peer: str) -> ModelStatus:
        """Parse a status; ``RemoteProtocolError(MALFORMED)`` if it is not one."""
        if len(payload) < _STATUS.size:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"model status from {peer} has {len(payload)} bytes", peer
            )
        round_, digest, next_round, running, starts_at = _STATUS.unpack(payload[: _STATUS.size])
        if not -1 <= round_ < next_round < 1 << 62 or running > 1:
            raise RemoteProtocolError(
                ReasonCode.MALFORMED,
                f"bad rounds in status from {peer}: completed {round_}, next {next_round}",
                peer,
            )
        if not 0.0 <= starts_at < float("inf"):  # NaN fails too
            raise RemoteProtocolError(
                ReasonCode.MALFORMED, f"bad start time in status from {peer}: {starts_at}", peer
            )
        return cls(round_, digest, next_round, bool(running), starts_at)


@dataclass(frozen=True)
class FetchedModel:
    """Weights fetched from ``peer`` after its round ``round``."""

    peer: str
    round: int
    weights: NDArray[np.float32]
    certificate: CommitCertificate | None = None


@dataclass(frozen=True, slots=True)
class SyncRefusal:
    """A member whose model was refused, for which claimed round, and why."""

    peer: str
    round: int
    reason: ReasonCode
    detail: str


CurrentModel = Callable[[], tuple[int, NDArray[np.float32], CommitCertificate | None]]
"""Returns (last completed round, shared weights, their certificate) of the local peer."""

Progress = Callable[[], tuple[int, bool, float]]
"""Returns (the round it starts next, whether it is in a round now, when it starts the next:
a wall-clock time, 0 if it waits for none) of the local peer."""

Answers = dict[str, tuple[ModelStatus, CommitCertificate | None]]
"""Per peer: its status and the certificate it served with it (``ModelSync.probe``)."""

_BACKOFF_FIRST, _BACKOFF_MAX = 1.0, 60.0
_MAX_NAMED = 4096


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
        policy: CertificatePolicy | None = None,
        on_refusal: Callable[[SyncRefusal], None] | None = None,
        clock: Callable[[], float] = trio.current_time,
        progress: Progress | None = None,
    ) -> None:
        """``policy``: the certificates to demand; without one nothing is ever adopted.

        ``progress``: where the local peer is, told in its status (without: a model's next).
        """
        self.progress = progress
        self.policy = policy
        self.on_refusal = on_refusal
        self.clock = clock
        self.refusals: list[SyncRefusal] = []
        self._named: set[tuple[str, int]] = set()
        self._backoff: dict[str, tuple[float, float]] = {}  # peer → (until, last delay)
        self.transport = transport
        self.serve_models = serve_models
        self.consortium = consortium
        self.current = current
        self.digest = DigestCache()
        self.size = size
        self.timeout = timeout
        transport.serve(MODEL_SYNC_PROTOCOL, self._handle)

    def _check_session(self, session: str, peer: str) -> None:
        # A member of another consortium or study protocol (its session differs) must neither
        # serve us a model nor be served ours, even with a certificate its own cohort signed.
        if session != self.consortium:
            raise RemoteProtocolError(
                ReasonCode.WRONG_CONSORTIUM,
                f"model sync for session {session!r}, not ours ({self.consortium!r})",
                peer,
            )

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
        request = await read_one_frame(stream, timeout=self.timeout)
        self._check_session(request.consortium, stream.remote_peer)
        if request.payload not in (STATUS, MODEL):
            raise RemoteProtocolError(
                ReasonCode.PROTOCOL_VIOLATION,
                "model-sync request is not STATUS or MODEL",
                stream.remote_peer,
            )
        round_, weights, certificate = self.current()
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
        next_round, running, starts_at = (
            (round_ + 1, False, 0.0) if self.progress is None else self.progress()
        )
        status = ModelStatus(
            round_, self.digest(round_, weights), max(next_round, round_ + 1), running, starts_at
        ).encode()
        if certificate is not None:  # the fetcher judges whether it covers the status
            status += certificate.encode()
        await write_frame(stream, self._frame(round_, status), timeout=self.timeout)
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

    def base(self) -> ModelBase:
        """The identity of the model served: its round and digest (a round's ``ModelBase``)."""
        round_, weights, _ = self.current()
        return ModelBase(round_, self.digest(round_, weights))

    async def _ask(
        self, peer: str, what: bytes
    ) -> tuple[ModelStatus, CommitCertificate | None, NDArray[np.float32] | None]:
        stream = await self.transport.open_stream(peer, MODEL_SYNC_PROTOCOL)
        async with stream:
            await write_frame(stream, self._frame(0, what), timeout=self.timeout)
            reply = await read_one_frame(stream, timeout=self.timeout, expect=None)
            if reply.type is FrameType.REJECT:
                reason, message = decode_reject(reply.payload)
                raise RejectedByPeer(f"{peer} refused the request: {message}", reason)
            if reply.type is not FrameType.CONTROL:
                raise RemoteProtocolError(
                    ReasonCode.PROTOCOL_VIOLATION, f"{peer} answered with {reply.type.name}", peer
                )
            self._check_session(reply.consortium, peer)
            status = ModelStatus.decode(reply.payload, peer)
            extra = reply.payload[_STATUS.size :]
            certificate = CommitCertificate.decode(extra, peer) if extra else None
            if what == STATUS:
                return status, certificate, None
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
            return status, certificate, vector

    async def status_of(self, peer: str) -> ModelStatus:
        """``peer``'s last completed round and weights digest."""
        status, _, _ = await self._ask(peer, STATUS)
        return status

    async def probe_all(self, peers: Sequence[str], timeout: float) -> dict[str, ModelStatus]:
        """The status of every peer that answers within ``timeout`` (asked concurrently)."""
        return {p: s for p, (s, _) in (await self.probe(peers, timeout)).items()}

    async def probe(self, peers: Sequence[str], timeout: float) -> Answers:
        """Each answering peer's status and the certificate it serves (asked concurrently)."""
        answers: Answers = {}

        async def probe(peer: str) -> None:
            try:
                with trio.fail_after(timeout):
                    status, certificate, _ = await self._ask(peer, STATUS)
                answers[peer] = (status, certificate)
            except (P2PFedError, trio.TooSlowError) as exc:
                log.debug("model sync: %s unavailable (%s)", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(probe, peer)
        return answers

    def backing_off(self, peer: str) -> bool:
        """True while ``peer`` is left alone after a refused model."""
        return peer in self._backoff and self.clock() < self._backoff[peer][0]

    def _refuse(self, peer: str, round_: int, exc: RemoteProtocolError) -> None:
        """Name ``peer`` once per claimed round and back off from it (doubling, bounded)."""
        delay = min(2 * self._backoff.get(peer, (0.0, _BACKOFF_FIRST / 2))[1], _BACKOFF_MAX)
        self._backoff[peer] = (self.clock() + delay, delay)
        if (peer, round_) in self._named:
            return
        if len(self._named) >= _MAX_NAMED:  # a peer inventing rounds cannot grow it forever
            self._named.clear()
        self._named.add((peer, round_))
        refusal = SyncRefusal(peer, round_, exc.reason, str(exc))
        self.refusals.append(refusal)
        log.warning("model sync: refused the model of %s (round %d): %s", peer, round_, exc)
        if self.on_refusal is not None:
            self.on_refusal(refusal)

    def _certified(
        self, peer: str, status: ModelStatus, certificate: CommitCertificate | None
    ) -> CommitCertificate:
        """The certificate that covers exactly this status; ``RemoteProtocolError`` if none."""
        assert self.policy is not None  # fetch and best_model adopt nothing without one
        if certificate is None:
            raise RemoteProtocolError(
                ReasonCode.BAD_SIGNATURE,
                f"{peer} claims round {status.round} without a commit certificate",
                peer,
            )
        if (certificate.round, certificate.digest) != (status.round, status.digest):
            raise RemoteProtocolError(
                ReasonCode.DIGEST_MISMATCH,
                f"{peer} claims round {status.round} but its certificate is for round "
                f"{certificate.round} and other weights",
                peer,
            )
        self.policy.check(certificate, peer)
        return certificate

    def certificate_of(
        self, answers: Answers, round_: int, digest: bytes
    ) -> CommitCertificate | None:
        """A valid certificate a member serves for exactly the model (``round_``, ``digest``).

        What a member takes whose own wait for the votes ended below the quorum. It passes the
        same checks as one for a model to adopt: a stolen key's own is refused and named.
        """
        if self.policy is None:
            return None
        for peer, (status, certificate) in sorted(answers.items()):
            if certificate is None or (status.round, status.digest) != (round_, digest):
                continue
            try:
                return self._certified(peer, status, certificate)
            except RemoteProtocolError as exc:
                self._refuse(peer, status.round, exc)
        return None

    async def fetch(self, peer: str, claimed: int = -1) -> FetchedModel | None:
        """``peer``'s current certified model, or None (refused, or not had in time).

        ``claimed``: the round its status claimed, to name it by in a refusal.
        """
        if self.policy is None or self.backing_off(peer):
            return None
        try:
            with trio.fail_after(self.timeout * 4):
                status, certificate, weights = await self._ask(peer, MODEL)
            certified = self._certified(peer, status, certificate)
        except RemoteProtocolError as exc:
            self._refuse(peer, claimed, exc)
            return None
        except (P2PFedError, trio.TooSlowError) as exc:
            log.info("model sync: fetching from %s failed (%s)", peer, exc)
            return None
        if weights is None:
            return None
        return FetchedModel(peer, status.round, weights, certified)

    async def best_model(self, peers: Sequence[str], newer_than: int) -> FetchedModel | None:
        """The model of the most advanced certified round past ``newer_than``, if any.

        Members whose claimed round is not covered by a valid certificate are refused.
        """
        if self.policy is None:
            return None
        answers = await self.probe([p for p in peers if not self.backing_off(p)], self.timeout)
        certified: dict[str, CommitCertificate] = {}
        for peer, (status, certificate) in answers.items():
            if status.round <= newer_than:
                continue
            try:
                certified[peer] = self._certified(peer, status, certificate)
            except RemoteProtocolError as exc:
                self._refuse(peer, status.round, exc)
        votes: dict[tuple[int, bytes], int] = {}
        for c in certified.values():
            votes[(c.round, c.digest)] = votes.get((c.round, c.digest), 0) + 1

        def rank(peer: str) -> tuple[int, int]:
            c = certified[peer]
            return (-c.round, -votes[(c.round, c.digest)])

        for peer in sorted(certified, key=rank):
            fetched = await self.fetch(peer, certified[peer].round)
            # The member may have finished another round since it was probed: any certified
            # model past ours will do.
            if fetched is not None and fetched.round > newer_than:
                return fetched
        return None


__all__ = [
    "MODEL_SYNC_PROTOCOL",
    "FetchedModel",
    "ModelStatus",
    "ModelSync",
    "SyncRefusal",
    "weights_digest",
]
