"""One peer's round over bytes and a clock, sans-I/O: all a driver has to do is move bytes.

Theory of operation: ``SecAggPeer`` takes decoded messages in protocol order and is told
when a stage's deadline passed. A network gives neither: messages arrive as bytes on
separate streams, so a fast peer's shares can overtake its own key advertisement, and a
masked sum can name contributors whose mask-set commitments are still on their way.
``SecAggSession`` closes that gap without doing any I/O itself:

- ``receive(sender, data, now)`` decodes each message once; one that arrived before what it
  depends on (``SecAggPeer.is_early``) is held back (at most ``MAX_HELD``, so a flood cannot
  grow it) and offered again after every change, instead of being refused;
- every stage ends ``stage_timeout`` after it began: ``next()`` returns ``Wait(deadline)``
  and ``tick(now)`` fires the peer's deadline once ``now`` reaches it;
- once the peer holds its masked vector, ``next()`` returns ``NeedSum(vector)`` (no deadline:
  the summation has its own); ``summed(result, now)`` takes (total, contributors), or None
  if the sum failed, and holds the sum back until every contributor's commitment is in, or
  for ``stage_timeout`` at most, before the peer checks it;
- ``next()`` returns ``Finished`` once the round ended (DONE or ABORTED).

Every call returns frozen events: ``Send(to, data)`` to transmit, and ``Refused(sender,
error)`` for a message the peer refused (also recorded in ``SecAggPeer.rejections``).
``p2pfed.collectives.secure.drive_secagg`` is the trio driver.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from p2pfed.errors import ConfigError, RemoteProtocolError
from p2pfed.secagg.messages import Message, encode
from p2pfed.secagg.primitives import UIntVector
from p2pfed.secagg.protocol import Input, Outgoing, SecAggPeer
from p2pfed.secagg.state import Stage

MAX_HELD: Final = 4096
"""Early messages held back per round (a few per peer and stage)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes for the driver to send to one peer."""

    to: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the peer refused; it changed nothing."""

    sender: str
    error: RemoteProtocolError


Action = Send | Refused


@dataclass(frozen=True, slots=True)
class Wait:
    """Deliver messages as they come; call ``tick`` at ``deadline`` (clock seconds)."""

    deadline: float


@dataclass(frozen=True, slots=True)
class NeedSum:
    """Sum ``vector`` with the other peers' masked vectors and pass the result to ``summed``."""

    vector: UIntVector


@dataclass(frozen=True, slots=True)
class Finished:
    """The round ended in ``stage`` (DONE or ABORTED); nothing more to do."""

    stage: Stage


Need = Wait | NeedSum | Finished


class SecAggSession:
    """Feeds one ``SecAggPeer`` bytes and time (see the module docstring)."""

    def __init__(self, peer: SecAggPeer, stage_timeout: float, max_held: int = MAX_HELD) -> None:
        if stage_timeout <= 0:
            raise ConfigError(f"stage_timeout {stage_timeout} must be positive")
        self.peer = peer
        self.stage_timeout = stage_timeout
        self._max_held = max_held
        self._held: list[tuple[str, Message]] = []
        self._stage = peer.stage
        self._since = 0.0
        self._sum: tuple[UIntVector, frozenset[str]] | None = None
        self._sum_since = 0.0

    def next(self) -> Need:
        """What the session waits for now."""
        peer = self.peer
        if peer.done:
            return Finished(peer.stage)
        if self._sum is not None:
            return Wait(self._sum_since + self.stage_timeout)
        if peer.stage is Stage.MASKED_INPUT and peer.masked_vector is not None:
            return NeedSum(peer.masked_vector)
        return Wait(self._since + self.stage_timeout)

    def start(self, words: Input, now: float) -> list[Action]:
        """Begin the round with this peer's quantised input (or its maker: ``SecAggPeer.start``)."""
        out = self._sends(self.peer.start(words))
        self._observe(now)
        return out

    def receive(self, sender: str, data: bytes, now: float) -> list[Action]:
        """Take ``data`` from the authenticated ``sender``: decode, hold back or deliver."""
        try:
            message = self.peer.decode_from(sender, data)
        except RemoteProtocolError as exc:
            return [Refused(sender, exc)]
        if self.peer.is_early(sender, message):
            if len(self._held) < self._max_held:
                self._held.append((sender, message))
            return []
        out, accepted = self._deliver(sender, message)
        if accepted:
            out += self._retry_held() + self._release_sum(force=False)
        self._observe(now)
        return out

    def tick(self, now: float) -> list[Action]:
        """The clock reads ``now``: fire the current deadline if it passed."""
        need = self.next()
        if not isinstance(need, Wait) or now < need.deadline:
            return []
        if self._sum is not None:
            out = self._release_sum(force=True)
        else:
            out = self._sends(self.peer.deadline()) + self._retry_held()
        self._observe(now)
        return out

    def summed(self, result: tuple[UIntVector, Iterable[str]] | None, now: float) -> list[Action]:
        """The answer to ``NeedSum``: (total, contributors), or None if no sum was formed."""
        if result is None:
            if self.peer.stage is Stage.MASKED_INPUT:
                self.peer.deadline()
            self._observe(now)
            return []
        # Commitments travel apart from (and may trail) the vectors: the peer can check the
        # sum only once every contributor's mask set is in.
        self._sum, self._sum_since = (result[0], frozenset(result[1])), now
        out = self._release_sum(force=False)
        self._observe(now)
        return out

    def _release_sum(self, *, force: bool) -> list[Action]:
        if self._sum is None:
            return []
        total, contributors = self._sum
        if not force and not contributors <= self.peer.committed:
            return []
        self._sum = None
        return self._sends(self.peer.receive_sum(total, contributors)) + self._retry_held()

    def _deliver(self, sender: str, message: Message) -> tuple[list[Action], bool]:
        try:
            return self._sends(self.peer.receive(sender, message)), True
        except RemoteProtocolError as exc:
            return [Refused(sender, exc)], False

    def _retry_held(self) -> list[Action]:
        out: list[Action] = []
        changed = True
        while changed and self._held:
            changed = False
            for item in list(self._held):
                if not self.peer.is_early(*item):
                    self._held.remove(item)
                    actions, accepted = self._deliver(*item)
                    out += actions
                    changed |= accepted
        return out

    def _observe(self, now: float) -> None:
        if self.peer.stage is not self._stage:
            self._stage, self._since = self.peer.stage, now

    @staticmethod
    def _sends(outgoing: list[Outgoing]) -> list[Action]:
        encoded: dict[int, bytes] = {}  # a broadcast is one message object: encode it once
        out: list[Action] = []
        for item in outgoing:
            data = encoded.get(id(item.message))
            if data is None:
                data = encoded[id(item.message)] = encode(item.message)
            out.append(Send(item.to, data))
        return out
