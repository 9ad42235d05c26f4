"""Inbound TCP connections before they authenticate: a deadline, a per-address cap, no leak.

Theory of operation: anyone can open a TCP connection to a member's listen port without a
key. py-libp2p 0.8.1 gives each one of its 250 inbound slots until its upgrade timeout (10 s)
and, once upgraded, keeps the slot and a task until the whole swarm stops.
``hold_inbound_only_while_open`` replaces the swarm's per-connection step: the Noise handshake
and muxer negotiation run under ``PendingHandshakes`` (closed at ``handshake_timeout``; at
most ``per_source`` in flight per source address, a newer one closing the oldest), and an
upgraded connection's task ends, and its slot is released, when that connection closes.
"""

from __future__ import annotations

import logging
from typing import Any

import multiaddr
import trio
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm

log = logging.getLogger(__name__)


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


def _source_of(read_write_closer: Any) -> str:
    try:
        address = read_write_closer.get_remote_address()
    except Exception:
        address = None
    return str(address[0]) if address else "unknown"


def hold_inbound_only_while_open(swarm: Swarm, pending: PendingHandshakes) -> None:
    """Make the swarm's per-inbound-connection task end when that connection closes.

    py-libp2p 0.8.1 keeps the listener's task for each inbound TCP connection alive until the
    whole swarm stops (trio closes the socket when that task returns), so a long-lived peer
    leaks one task per connection it ever accepted, and holds one of its 250 inbound slots per
    connection forever, so it refuses every connection after the 250th. This replaces that step,
    for this swarm instance only, with one that upgrades the connection and then waits for *it*
    to close (releasing the slot). It skips libp2p's IP allow/deny check, which we do not set.
    The upgrade runs under ``pending``: past its deadline, or evicted by a newer connection
    from the same address, the connection is closed.
    """

    async def upgrade_then_wait_for_close(
        read_write_closer: Any, maddr: multiaddr.Multiaddr, failure_event: Any
    ) -> None:
        raw_conn = RawConnection(read_write_closer, False)
        source = _source_of(read_write_closer)
        muxed = None
        scope = pending.open(source)
        try:
            with scope:
                muxed = await swarm.upgrade_inbound_raw_conn(raw_conn, maddr)
        except Exception as exc:  # refused or failed upgrades are already logged by libp2p
            log.debug("inbound connection on %s not upgraded: %r", maddr, exc)
        finally:
            pending.close(source, scope)
        if muxed is None:
            if scope.cancelled_caught:
                log.info("closed an inbound connection from %s: no handshake in time", source)
            with trio.CancelScope(shield=True):
                try:
                    await raw_conn.close()
                except Exception as close_exc:
                    log.debug("closing a failed inbound connection: %r", close_exc)
            return
        closed = getattr(muxed, "event_closed", None)
        if isinstance(closed, trio.Event):
            await closed.wait()
        else:
            await swarm.manager.wait_finished()

    if not hasattr(swarm, "_do_handle_inbound_connection"):
        raise RuntimeError("this py-libp2p has no Swarm._do_handle_inbound_connection to replace")
    swarm._do_handle_inbound_connection = upgrade_then_wait_for_close  # type: ignore[method-assign]
