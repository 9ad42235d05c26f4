"""Inbound TCP connections before they authenticate: a deadline and a per-address cap.

Theory of operation: anyone can open a TCP connection to a member's listen port without a
key. py-libp2p 0.8.1 gives each one of its 250 inbound slots until its upgrade timeout (10 s).
``PendingHandshakes`` bounds that: each inbound Noise handshake and muxer negotiation runs in a
cancel scope with a deadline (``timeout``), and one source address has at most ``per_source``
in flight, a newer one closing the oldest. It is plain trio bookkeeping; the swarm step that
uses it is ``libp2p_compat.hold_inbound_only_while_open``.
"""

from __future__ import annotations

import trio


class PendingHandshakes:
    """Inbound connections not yet authenticated, each with a deadline.

    Each source address has at most ``per_source`` at once (a newer one closes the oldest).
    ``timed_out`` and ``evicted`` count the connections closed for either reason.
    """

    def __init__(self, timeout: float, per_source: int) -> None:
        self.timeout = timeout
        self.per_source = per_source
        self.timed_out = 0
        self.evicted = 0
        self._by_source: dict[str, list[trio.CancelScope]] = {}
        self._evicted: set[trio.CancelScope] = set()

    def open(self, source: str) -> trio.CancelScope:
        """The scope to run one inbound handshake from ``source`` in (deadline set)."""
        scope = trio.CancelScope(deadline=trio.current_time() + self.timeout)
        waiting = self._by_source.setdefault(source, [])
        while len(waiting) >= self.per_source:
            # The oldest is the likeliest idle: an honest handshake takes milliseconds.
            oldest = waiting.pop(0)
            self._evicted.add(oldest)
            oldest.cancel()
            self.evicted += 1
        waiting.append(scope)
        return scope

    def close(self, source: str, scope: trio.CancelScope) -> None:
        """The handshake in ``scope`` ended (done, failed, timed out or evicted)."""
        waiting = self._by_source.get(source, [])
        if scope in waiting:
            waiting.remove(scope)
        if not waiting:
            self._by_source.pop(source, None)
        if scope in self._evicted:
            self._evicted.discard(scope)
        elif scope.cancelled_caught:
            self.timed_out += 1

    def count(self, source: str) -> int:
        """How many handshakes from ``source`` are pending now."""
        return len(self._by_source.get(source, []))
