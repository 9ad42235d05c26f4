"""Dial-back: a member learns whether others can dial the addresses the roster lists for it.

Theory of operation: a member whose roster entry lists addresses asks up to ``HELPERS``
connected members, over ``DIALBACK_PROTOCOL``, to dial it back. The request is a nonce and
nothing else: the helper dials the addresses *its own* roster lists for the asker, never one
the asker names, so no member can make another dial a third party. Each dial is a fresh TCP
connection and a full security handshake that must authenticate the asker's peer ID; then
the helper closes it before the muxer is negotiated, so the connection never joins the
asker's connection table and no stream of a round can land on it. (py-libp2p's own AutoNAT
dials back with ``host.connect``, which returns the connection the two already share: every
asker is told it is public.) The answer says, per address, ``ok`` or why not.

``summarize`` makes the asker's ``Reachability``: "dialable" when any helper reached any
address, "not dialable" when every helper that answered tried and failed (each address with
each helper's reason), "unknown" while none answered. ``DialBack.keep_checking`` checks once
a member is connected, then every ``RECHECK_S`` (``RETRY_S`` while not dialable, so a fixed
port forward shows within a minute; ``UNKNOWN_RETRY_S`` while no helper answered, as when
the first connected peers knew no address for us). It decides nothing else: relay
reservations stay, since a helper outside the asker's network may fail where members inside
it succeed.

Bounds: requests and answers are at most ``MAX_MESSAGE`` bytes of JSON; a helper dials at
most ``MAX_ADDRS`` addresses for at most ``DIAL_TIMEOUT_S`` each; the stream limiter allows a
member a few requests a minute (``ratelimit.DEFAULT_LIMITS``).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from p2pfed.errors import BrokenError, ClosedError, ReasonCode, RemoteProtocolError
from p2pfed.transport.base import Handler, Stream
from p2pfed.transport.libp2p_logging import EXPECTED_MUX_FAILURES, dial_reason


class DialingTransport(Protocol):
    """What dial-back needs of a transport (``RelayedTransport`` has it)."""

    def serve(self, protocol: str, handler: Handler) -> None: ...
    def connected_peers(self) -> list[str]: ...
    def peer_addrs(self, peer: str) -> Sequence[Any]: ...
    async def open_stream(self, peer: str, protocol: str) -> Stream: ...
    async def dial_and_authenticate(self, addr: Any, peer: str) -> None: ...


log = logging.getLogger(__name__)

DIALBACK_PROTOCOL = "/p2pfed/dialback/1.0.0"
MAX_MESSAGE = 4096
MAX_ADDRS = 4
MAX_REASON = 200
NONCE_BYTES = 16
DIAL_TIMEOUT_S = 5.0
HELPERS = 2
RECHECK_S = 600.0
RETRY_S = 60.0
UNKNOWN_RETRY_S = 15.0
OK = "ok"
EXPECTED_GRACE_S = 10.0
"""How long after an answer a helper's closed dial-back may still be noticed here."""


def encode_request(nonce: bytes) -> bytes:
    """A request: the nonce only (the helper dials the roster's addresses)."""
    return json.dumps({"nonce": nonce.hex()}).encode()


def decode_request(data: bytes) -> bytes:
    """The nonce of a request; ``RemoteProtocolError`` (MALFORMED) for anything else."""
    try:
        nonce = bytes.fromhex(json.loads(data)["nonce"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteProtocolError(ReasonCode.MALFORMED, f"bad dial-back request: {exc}") from None
    if len(nonce) != NONCE_BYTES:
        raise RemoteProtocolError(ReasonCode.MALFORMED, "a dial-back nonce is 16 bytes")
    return nonce


def encode_answer(nonce: bytes, results: Sequence[tuple[str, str]]) -> bytes:
    """An answer: the nonce echoed, and (address, "ok" or why not) per address dialled."""
    rows = [[addr, why[:MAX_REASON]] for addr, why in results[:MAX_ADDRS]]
    return json.dumps({"nonce": nonce.hex(), "results": rows}).encode()


def decode_answer(data: bytes, nonce: bytes) -> tuple[tuple[str, str], ...]:
    """(address, "ok" or why not) per address dialled; MALFORMED for a bad or stale answer."""
    try:
        doc = json.loads(data)
        rows = tuple((str(a)[:MAX_REASON], str(w)[:MAX_REASON]) for a, w in doc["results"])
        echoed = bytes.fromhex(doc["nonce"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteProtocolError(ReasonCode.MALFORMED, f"bad dial-back answer: {exc}") from None
    if echoed != nonce:
        raise RemoteProtocolError(ReasonCode.REPLAY, "a dial-back answer for another request")
    if len(rows) > MAX_ADDRS:
        raise RemoteProtocolError(ReasonCode.OVERSIZED, f"over {MAX_ADDRS} dial-back results")
    return rows


@dataclass(frozen=True)
class Reachability:
    """Whether other members could dial this member's roster addresses, and why not."""

    state: str = "unknown"  # "dialable", "not dialable" or "unknown"
    addresses: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Address → helper → "ok" or why that helper could not dial it."""
    checked_at: float | None = None

    def to_status(self, name_of: Callable[[str], str] = str) -> dict[str, Any]:
        """``status.json``'s ``reachability``: helpers by member name."""
        return {
            "state": self.state,
            "addresses": {
                addr: {name_of(h): why for h, why in by.items()}
                for addr, by in self.addresses.items()
            },
            "checked_at": self.checked_at,
        }


def summarize(
    answers: Mapping[str, Sequence[tuple[str, str]]], now: float | None = None
) -> Reachability:
    """Helper → its results, as one ``Reachability`` (see the module docstring)."""
    by_addr: dict[str, dict[str, str]] = {}
    for helper, rows in answers.items():
        for addr, why in rows:
            by_addr.setdefault(addr, {})[helper] = why
    if not by_addr:
        state = "unknown"
    elif any(OK in by.values() for by in by_addr.values()):
        state = "dialable"
    else:
        state = "not dialable"
    return Reachability(state, by_addr, time.time() if now is None else now)


class DialBack:
    """Serves dial-backs on ``transport`` and checks this member's ``own_addrs``."""

    def __init__(
        self,
        transport: DialingTransport,
        own_addrs: Sequence[str],
        *,
        last_resort: Collection[str] = (),
        name_of: Callable[[str], str] = str,
    ) -> None:
        self.transport = transport
        self.own_addrs = tuple(own_addrs)
        self.last_resort = frozenset(last_resort)  # asked after the members (relays)
        self.name_of = name_of
        self.reachability = Reachability()
        transport.serve(DIALBACK_PROTOCOL, self._serve)

    # -- helping another member --------------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        nonce = decode_request(await _read_all(stream))
        results = await self.dial_back(stream.remote_peer)
        await stream.send_all(encode_answer(nonce, results))
        await stream.send_eof()

    async def dial_back(self, asker: str) -> list[tuple[str, str]]:
        """Dial each roster address of ``asker`` afresh: "ok" or why not, per address."""
        addrs = self.transport.peer_addrs(asker)[:MAX_ADDRS]
        results = []
        for addr in addrs:
            try:
                with trio.fail_after(DIAL_TIMEOUT_S):
                    await self.transport.dial_and_authenticate(addr, asker)
                results.append((str(addr), OK))
            except trio.TooSlowError:
                results.append((str(addr), f"no handshake within {DIAL_TIMEOUT_S:g} s"))
            except Exception as exc:  # the dial's own error, whatever layer raised it
                results.append((str(addr), dial_reason(exc)))
        return results

    # -- checking ourselves --------------------------------------------------------------

    async def check(self) -> Reachability:
        """Ask up to ``HELPERS`` connected peers (members before ``last_resort``)."""
        connected = sorted(self.transport.connected_peers(), key=lambda p: p in self.last_resort)
        answers: dict[str, tuple[tuple[str, str], ...]] = {}
        for helper in connected[:HELPERS]:
            try:
                answers[helper] = await self._ask(helper)
            except (BrokenError, ClosedError, RemoteProtocolError, trio.TooSlowError) as exc:
                log.info("dial-back by %s failed: %s", self.name_of(helper), exc)
        self.reachability = summarize(answers)
        return self.reachability

    async def _ask(self, helper: str) -> tuple[tuple[str, str], ...]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        limit = DIAL_TIMEOUT_S * MAX_ADDRS + 10
        # Its dials close after the handshake: not an error, for as long as they may arrive.
        EXPECTED_MUX_FAILURES[helper] = time.monotonic() + limit + EXPECTED_GRACE_S
        with trio.fail_after(limit):
            stream = await self.transport.open_stream(helper, DIALBACK_PROTOCOL)
            async with stream:
                await stream.send_all(encode_request(nonce))
                await stream.send_eof()
                return decode_answer(await _read_all(stream), nonce)

    async def keep_checking(self, *, poll_s: float = 2.0) -> None:
        """Check once a peer is connected, then every ``RECHECK_S`` (sooner if not ok)."""
        while True:
            if not self.transport.connected_peers():
                await trio.sleep(poll_s)
                continue
            before = self.reachability.state
            now = await self.check()
            if now.state != before:
                self._log(now)
            wait = {"dialable": RECHECK_S, "unknown": UNKNOWN_RETRY_S}.get(now.state, RETRY_S)
            await trio.sleep(wait)

    def _log(self, r: Reachability) -> None:
        if r.state == "dialable":
            ok = sorted(a for a, by in r.addresses.items() if OK in by.values())
            log.info("other members can dial this member at %s", ", ".join(ok))
        elif r.state == "not dialable":
            why = "; ".join(
                f"{addr}: {', '.join(f'{self.name_of(h)}: {w}' for h, w in by.items())}"
                for addr, by in r.addresses.items()
            )
            log.warning(
                "other members cannot dial this member at the roster's addresses (%s): check "
                "the port forwarding and the firewall's inbound rule; members behind NAT still "
                "reach it through a relay",
                why,
            )


async def _read_all(stream: Stream) -> bytes:
    """The stream's bytes up to its end; OVERSIZED past ``MAX_MESSAGE``."""
    data = bytearray()
    while chunk := await stream.receive_some(MAX_MESSAGE + 1):
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise RemoteProtocolError(
                ReasonCode.OVERSIZED, f"a dial-back message over {MAX_MESSAGE} bytes"
            )
    return bytes(data)
