"""The live roster: a watched roster file and a roster-announcement protocol.

Theory of operation: ``LiveRoster`` is the sans-I/O core. It takes roster documents offered
by the operator (the roster file changed) or by a peer, and accepts a newer version only
through ``RosterGate.update``: m-of-n signatures of the admins already trusted, no rollback,
no conflicting equal version, not expired. An accepted version received from a peer is also
written atomically to the node's roster file, so a restart uses it. A refused document
changes nothing; the refusal names the sender in one sentence.

``RosterAnnouncer`` is the thin trio driver. It serves ``ROSTER_PROTOCOL``, where one
exchange is symmetric: the dialler sends its signed roster document (one CONTROL frame of at
most ``MAX_ANNOUNCE_BYTES``), the listener answers with its own, and each side offers the
other's document to its ``LiveRoster``. So one exchange both pushes a newer version and
fetches one: a node that accepted version v pushes it to every member of v, and a member that
was offline catches up with its exchange at start, or with the periodic exchange of its
peers when it was only cut off. The driver also polls the roster file
(size, mtime and content digest, each ``poll_interval`` seconds of trio's injectable clock).
Admission is the transport's: a member removed in v cannot even open the stream at a peer
that accepted v.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from p2pfed.durable import atomic_write
from p2pfed.errors import (
    BrokenError,
    ClosedError,
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
)
from p2pfed.identity import Role, Roster, RosterError, RosterGate, RosterProblem
from p2pfed.transport.base import Stream, Transport
from p2pfed.wire import Frame, FrameType, write_frame
from p2pfed.wire.exchange import read_one_frame
from p2pfed.wire.frames import Limits

log = logging.getLogger(__name__)

ROSTER_PROTOCOL = "/p2pfed/roster/1.0.0"
MAX_ANNOUNCE_BYTES = 1 << 20
_LIMITS = Limits(max_payload=MAX_ANNOUNCE_BYTES, max_frame_bytes=MAX_ANNOUNCE_BYTES + 1024)
FILE_SOURCE = "the roster file"


@dataclass(frozen=True)
class RosterChange:
    """A newer roster accepted from ``source`` (a peer ID or ``FILE_SOURCE``)."""

    old: Roster
    new: Roster
    source: str

    @property
    def added(self) -> tuple[str, ...]:
        """Peer IDs listed in the new version only."""
        return tuple(sorted({m.peer_id for m in self.new.members} - self._old_ids))

    @property
    def removed(self) -> tuple[str, ...]:
        """Peer IDs listed in the old version only."""
        return tuple(sorted(self._old_ids - {m.peer_id for m in self.new.members}))

    @property
    def _old_ids(self) -> set[str]:
        return {m.peer_id for m in self.old.members}


@dataclass(frozen=True)
class Refusal:
    """A roster document refused from ``source``; ``problem`` is None for a transport fault."""

    source: str
    problem: RosterProblem | None
    message: str


class LiveRoster:
    """Offers of roster documents, accepted through ``gate``; see the module docstring."""

    def __init__(self, gate: RosterGate, path: str | os.PathLike[str]) -> None:
        self.gate = gate
        self.path = Path(path)
        self.refusals: list[Refusal] = []
        self._seen: tuple[int, int, str] | None = self._stat_digest()

    def document(self) -> bytes:
        """The signed document of the roster in force, as sent to peers."""
        return self.gate.roster.to_json().encode()

    def offer(self, document: bytes, source: str) -> RosterChange | None:
        """Accept ``document`` if it is a newer valid roster; None if it changes nothing.

        Raises ``RosterError`` (one sentence naming ``source``) if it is refused: not a
        roster, too large, badly signed, rolled back, conflicting, or expired.
        """
        if len(document) > MAX_ANNOUNCE_BYTES:
            raise RosterError(
                RosterProblem.MALFORMED,
                f"the roster from {source} has {len(document)} bytes, over the "
                f"{MAX_ANNOUNCE_BYTES}-byte limit",
            )
        old = self.gate.roster
        try:
            roster = Roster.from_json(document, f"the roster from {source}")
            if roster.version == old.version and roster.digest() == old.digest():
                return None  # the version in force: nothing to check or do
            self.gate.update(roster)
        except RosterError as exc:
            raise RosterError(exc.problem, f"refused the roster from {source}: {exc}") from None
        if source != FILE_SOURCE:
            # A restart then starts from this version instead of refusing an older file.
            atomic_write(self.path, roster.to_json().encode(), 0o644, overwrite=True)
            self._seen = self._stat_digest()
        return RosterChange(old, roster, source)

    def poll_file(self) -> RosterChange | None:
        """Offer the roster file if it changed since the last poll; a refusal is logged."""
        seen = self._stat_digest()
        if seen is None or seen == self._seen:
            return None
        self._seen = seen
        try:
            return self.offer(self.path.read_bytes(), FILE_SOURCE)
        except (RosterError, OSError) as exc:
            self.refuse(FILE_SOURCE, exc)
            return None

    def refuse(self, source: str, exc: Exception) -> None:
        """Record and log a refused document (or a failed exchange) from ``source``."""
        problem = exc.problem if isinstance(exc, RosterError) else None
        if problem is RosterProblem.ROLLED_BACK and source != FILE_SOURCE:
            # A member that is behind sends its older version; ours went back to it.
            log.info(
                "peer %s holds an older roster than version %d",
                source,
                self.gate.roster.version,
                extra={"peer": source},
            )
            return
        self.refusals.append(Refusal(source, problem, str(exc)))
        log.warning("%s", exc, extra={"peer": source})

    def _stat_digest(self) -> tuple[int, int, str] | None:
        try:
            info = self.path.stat()
            data = self.path.read_bytes()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, hashlib.sha256(data).hexdigest()


OnChange = Callable[[RosterChange], Awaitable[None]]


def session_id(
    consortium: str, version: int, protocol: str = "", limit: int = 64, tag: str = ""
) -> str:
    """The aggregation session of ``consortium``'s cohort under roster ``version``.

    Frames carry it as their consortium id, so a message from a cohort of another roster
    version (a member that has not switched yet, or a removed one) is refused, never mixed
    into this cohort's round of the same number; with ``protocol`` (a study protocol's hash)
    so is a message of a member that runs another study protocol; with ``tag`` (a setting
    all members must share, such as ``[rounds] compression``) so is one of a member that
    declares another. At most ``limit`` characters (the wire's).
    """
    suffix = f"@v{version}" + (f"~{protocol[:16]}" if protocol else "") + tag
    return consortium[: limit - len(suffix)] + suffix


def sync_session_id(consortium: str, protocol: str = "", limit: int = 64) -> str:
    """Model sync's session: ``consortium``, with a study protocol's hash when there is one.

    Not the roster version: members on either side of a roster renewal still see each
    other's status (a commit certificate binds its roster version anyway).
    """
    if not protocol:
        return consortium[:limit]
    tag = "~" + protocol[:16]
    return consortium[: limit - len(tag)] + tag


class Admission(Protocol):
    """What a transport offers to enforce a roster change (``Libp2pTransport`` does)."""

    def set_peer_addrs(self, peer: str, addrs: str | Iterable[str]) -> None: ...

    async def drop_refused_peers(self) -> list[str]: ...


async def enforce(change: RosterChange, transport: Admission) -> list[str]:
    """Dial added members at their roster addresses; close removed members' connections.

    The gate already refuses their new connections and streams; an open connection is
    closed here so nothing already under way continues. Returns the peers cut off.
    """
    for m in change.new.members:
        if m.peer_id in change.added and m.addresses:
            transport.set_peer_addrs(m.peer_id, m.addresses)
    dropped = await transport.drop_refused_peers()
    if dropped:
        log.warning("closed the connections of removed members: %s", ", ".join(dropped))
    return dropped


class RosterAnnouncer:
    """Serves and runs roster exchanges, and watches the roster file; see the module docs."""

    def __init__(
        self,
        transport: Transport,
        live: LiveRoster,
        on_change: OnChange,
        *,
        timeout: float = 10.0,
        poll_interval: float = 1.0,
        exchange_interval: float = 30.0,
    ) -> None:
        self.transport = transport
        self.live = live
        self.on_change = on_change
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.exchange_interval = exchange_interval
        transport.serve(ROSTER_PROTOCOL, self._handle)

    def _frame(self) -> Frame:
        roster = self.live.gate.roster
        return Frame(
            FrameType.CONTROL,
            roster.consortium_id,
            roster.version,
            self.transport.local_peer,
            0,
            self.live.document(),
        )

    async def _handle(self, stream: Stream) -> None:
        peer = stream.remote_peer
        try:
            theirs = await read_one_frame(stream, _LIMITS, self.timeout, expect=None)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.live.refuse(peer, ConfigError(f"refused a roster announcement from {peer}: {exc}"))
            return
        await write_frame(stream, self._frame(), _LIMITS, self.timeout)
        await self._consider(theirs, peer)

    async def _consider(self, frame: Frame, peer: str) -> None:
        if frame.type is not FrameType.CONTROL:
            self.live.refuse(
                peer,
                ConfigError(
                    f"refused a roster announcement from {peer}: a {frame.type.name} frame"
                ),
            )
            return
        try:
            change = self.live.offer(frame.payload, peer)
        except RosterError as exc:
            self.live.refuse(peer, exc)
            return
        if change is not None:
            await self._accepted(change)

    async def exchange(self, peer: str) -> int | None:
        """Send our roster to ``peer`` and offer its answer; faults are logged, never raised.

        Returns the version ``peer`` said it held when it answered (None: no answer).
        """
        try:
            with trio.fail_after(self.timeout):
                stream = await self.transport.open_stream(peer, ROSTER_PROTOCOL)
                async with stream:
                    await write_frame(stream, self._frame(), _LIMITS, self.timeout)
                    theirs = await read_one_frame(stream, _LIMITS, self.timeout, expect=None)
        except (BrokenError, ClosedError, RemoteProtocolError, LocalProtocolError) as exc:
            log.info("roster exchange with %s failed: %s", peer, exc, extra={"peer": peer})
            return None
        except trio.TooSlowError:
            log.info("roster exchange with %s timed out", peer, extra={"peer": peer})
            return None
        await self._consider(theirs, peer)
        return theirs.round

    async def wait_in_step(self, peers: Sequence[str], timeout: float) -> list[str]:
        """Exchange until each of ``peers`` answers with our version or newer; those behind.

        A new cohort's first round waits for this, so no member sends its first messages to
        a member still running the previous cohort (which would refuse them as another
        session's). A member that does not answer is not waited for; ``timeout`` bounds it.
        """
        me = self.transport.local_peer
        pending = {p for p in peers if p != me}
        with trio.move_on_after(timeout):
            while pending:
                for peer in sorted(pending):
                    held = await self.exchange(peer)
                    if held is None or held >= self.live.gate.roster.version:
                        pending.discard(peer)
                if pending:
                    await trio.sleep(0.1)
        return sorted(pending)

    async def exchange_all(self, peers: Sequence[str] | None = None) -> None:
        """Exchange with ``peers`` (default: the other members in force) concurrently."""
        me = self.transport.local_peer
        if peers is None:
            # Relays do not serve rosters: each gets its copy from the admins.
            peers = [m.peer_id for m in self.live.gate.roster.members if m.role is not Role.RELAY]
        async with trio.open_nursery() as nursery:
            for peer in peers:
                if peer != me:
                    nursery.start_soon(self.exchange, peer)

    async def _accepted(self, change: RosterChange) -> None:
        log.warning(
            "accepted roster version %d from %s (was %d): %d added, %d removed",
            change.new.version,
            change.source,
            change.old.version,
            len(change.added),
            len(change.removed),
            extra={"peer": change.source},
        )
        await self.on_change(change)
        # Push to the members of the new version (the source already has it).
        await self.exchange_all(
            [m.peer_id for m in change.new.members if m.peer_id != change.source]
        )

    async def run(self) -> None:
        """Catch up with the members at start, then watch the roster file forever.

        Every ``exchange_interval`` seconds it exchanges with the members again, so a member
        that was cut off (without restarting) when a version went out catches up once it is
        reachable again.
        """
        await self.exchange_all()
        next_exchange = trio.current_time() + self.exchange_interval
        while True:
            change = self.live.poll_file()
            if change is not None:
                await self._accepted(change)
            if trio.current_time() >= next_exchange:
                await self.exchange_all()
                next_exchange = trio.current_time() + self.exchange_interval
            await trio.sleep(self.poll_interval)


async def run_unless(event: trio.Event, work: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work``, cancelling it when ``event`` is set; True if it ran to its end."""
    finished = False
    async with trio.open_nursery() as nursery:

        async def cancel_on_event() -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(cancel_on_event)
        await work()
        finished = True
        nursery.cancel_scope.cancel()
    return finished
