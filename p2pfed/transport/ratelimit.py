"""Per-peer, per-protocol stream rate limits: token buckets, sans-I/O.

Theory of operation: every inbound stream a transport is about to hand to a protocol handler
first asks ``StreamLimiter.admit(peer, protocol)``. Each (peer, protocol) pair has a token
bucket holding at most ``burst`` tokens, refilled at ``rate`` tokens per second by an injected
clock; a stream takes one token or is refused before anything of it is read. So over any
window of ``w`` seconds one peer gets at most ``burst + rate * w`` streams of one protocol to
its handler, whatever it sends.

The default limits (``DEFAULT_LIMITS``) are computed from each protocol's legitimate use per
round and per neighbour, with the fastest round taken as ``FASTEST_ROUND_S`` and a headroom
factor, so honest traffic never meets them; a flood is cut to the allowance. Protocols not
listed get ``FALLBACK``. Only admitted peers reach the limiter (the roster gate runs first),
and at most ``max_peers`` peers are tracked (the least recently seen is forgotten: its bucket
starts full again, which only ever favours the peer).

Refusals are counted per peer and per protocol (``refused_by_peer``, ``refused_by_protocol``,
``refused_total``), reported to ``on_refuse`` (a metrics hook) and logged at most once per
peer per ``log_interval`` seconds, with how many were refused since that peer's last line.
It imports nothing but the standard library and ``errors``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from p2pfed.errors import ConfigError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Seconds from any fixed origin, never going backwards (``time.monotonic``)."""

FASTEST_ROUND_S = 0.1
"""The shortest round the defaults allow for (in-memory test rounds of tiny vectors)."""

HEADROOM = 4.0
"""How many times the legitimate per-round stream count a default allows."""


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``burst`` streams at once, refilled at ``rate`` streams per second."""

    rate: float
    burst: int
    why: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"a rate limit's rate must be a positive number, got {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ConfigError(f"a rate limit's burst must be an integer >= 1, got {self.burst!r}")

    @classmethod
    def per_round(cls, streams: int, why: str, burst_rounds: int = 32) -> Limit:
        """The limit for ``streams`` legitimate streams per round from one peer."""
        rate = HEADROOM * streams / FASTEST_ROUND_S
        return cls(rate=rate, burst=max(1, math.ceil(HEADROOM * streams * burst_rounds)), why=why)


DEFAULT_LIMITS: Mapping[str, Limit] = {
    # The protocol IDs are the serving modules' constants (tests check they match); the
    # transport sits below those modules and cannot import them.
    "/p2pfed/ring/1.0.0": Limit.per_round(
        3, "one stream per attempt from the predecessor; retried attempts wait for a timeout"
    ),
    "/p2pfed/gossip/push-pull/1.0.0": Limit.per_round(
        2, "one exchange per round per neighbour, and a retry"
    ),
    "/p2pfed/gossip/sync/1.0.0": Limit.per_round(2, "one vector per round per neighbour"),
    "/p2pfed/gossip/masked-sum/2.0.0": Limit.per_round(2, "one masked sum per group per round"),
    "/p2pfed/commit-vote/1.0.0": Limit.per_round(1, "one signed vote per contributor per round"),
    "/p2pfed/model-sync/3.0.0": Limit(
        rate=20.0, burst=40, why="catch-up polls each member every 0.2 s; a round ends in a probe"
    ),
    "/p2pfed/roster/1.0.0": Limit(
        rate=20.0, burst=64, why="a member awaiting a new version polls each other every 0.1 s"
    ),
    "/p2pfed/round/1.0.0": Limit.per_round(
        8, "a handful of control messages per member per round (the mailbox caps them at 64)"
    ),
    "/p2pfed/secagg/1.0.0": Limit.per_round(8, "a few secure-aggregation stages per round"),
    "/p2pfed/gossip/secagg/1.0.0": Limit.per_round(8, "a few stages per group per round"),
    "/p2pfed/dialback/1.0.0": Limit(
        rate=0.05, burst=4, why="a member asks two others at most every minute"
    ),
}

FALLBACK = Limit(rate=1000.0, burst=2000, why="any other protocol: only a flood is cut")
DEFAULT_MAX_PEERS = 1024
DEFAULT_LOG_INTERVAL = 60.0


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second, one taken per admitted stream."""

    __slots__ = ("limit", "stamp", "tokens")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token at time ``now`` if there is one; False (nothing taken) if not."""
        elapsed = max(0.0, now - self.stamp)  # a clock that steps back refills nothing
        self.tokens = min(float(self.limit.burst), self.tokens + elapsed * self.limit.rate)
        self.stamp = max(self.stamp, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _PeerState:
    __slots__ = ("buckets", "logged_at", "refused", "unlogged")

    def __init__(self) -> None:
        self.buckets: dict[str, TokenBucket] = {}
        self.logged_at: float | None = None
        self.refused = 0
        self.unlogged = 0


class StreamLimiter:
    """Token buckets per (peer, protocol); ``admit`` says whether a stream may be served."""

    def __init__(
        self,
        limits: Mapping[str, Limit] | None = None,
        *,
        fallback: Limit = FALLBACK,
        clock: Clock = time.monotonic,
        max_peers: int = DEFAULT_MAX_PEERS,
        log_interval: float = DEFAULT_LOG_INTERVAL,
        on_refuse: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_peers < 1:
            raise ConfigError(f"a rate limiter must track at least 1 peer, got {max_peers}")
        if not (math.isfinite(log_interval) and log_interval >= 0):
            raise ConfigError(f"log_interval must be seconds >= 0, got {log_interval!r}")
        self.limits = dict(DEFAULT_LIMITS if limits is None else limits)
        self.fallback = fallback
        self.clock = clock
        self.max_peers = max_peers
        self.log_interval = log_interval
        self.on_refuse = on_refuse
        self.refused_total = 0
        self.refused_by_protocol: dict[str, int] = {}
        self._peers: OrderedDict[str, _PeerState] = OrderedDict()

    def limit_of(self, protocol: str) -> Limit:
        """The limit that applies to ``protocol``."""
        return self.limits.get(protocol, self.fallback)

    def admit(self, peer: str, protocol: str) -> bool:
        """Whether ``peer`` may open one more ``protocol`` stream now (takes a token if so)."""
        now = self.clock()
        state = self._state(peer)
        bucket = state.buckets.get(protocol)
        if bucket is None:
            bucket = state.buckets[protocol] = TokenBucket(self.limit_of(protocol), now)
        if bucket.take(now):
            return True
        self._refused(peer, protocol, state, now)
        return False

    def refused_by_peer(self, peer: str) -> int:
        """Streams of ``peer`` refused while it was tracked."""
        state = self._peers.get(peer)
        return 0 if state is None else state.refused

    @property
    def tracked_peers(self) -> int:
        """How many peers have buckets now (at most ``max_peers``)."""
        return len(self._peers)

    def _state(self, peer: str) -> _PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState()
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return state

    def _refused(self, peer: str, protocol: str, state: _PeerState, now: float) -> None:
        self.refused_total += 1
        self.refused_by_protocol[protocol] = self.refused_by_protocol.get(protocol, 0) + 1
        state.refused += 1
        state.unlogged += 1
        if state.logged_at is None or now - state.logged_at >= self.log_interval:
            limit = self.limit_of(protocol)
            log.warning(
                "peer %s opens %s streams faster than %g/s (burst %d): refused %d since the "
                "last notice, %d in all",
                peer,
                protocol,
                limit.rate,
                limit.burst,
                state.unlogged,
                state.refused,
            )
            state.logged_at, state.unlogged = now, 0
        if self.on_refuse is not None:
            self.on_refuse(peer, protocol)
