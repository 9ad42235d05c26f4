"""Route py-libp2p's log records through p2pfed's logging.

Theory of operation: py-libp2p configures its ``libp2p`` logger with ``propagate=False`` and no
handler, so its warnings fall through to Python's last-resort handler and land on stderr,
bypassing whatever the application configured. ``route_libp2p_logging`` gives that logger one
handler that re-emits every record through the ``p2pfed.libp2p`` logger, so records reach the
handlers the application set on ``p2pfed`` or the root logger, keep their original logger name
(``libp2p.network.swarm``...), and obey the ``p2pfed.libp2p`` level. Calling it again is a no-op.

libp2p logs every failed dial at ERROR (two members down: about a hundred lines a minute,
none naming the member). Those records are dropped on the way (``_is_dial_failure``) and the
transport reports through ``DialNotices`` instead: one ``waiting for <member> (<address>):
<reason>`` line per member, then at most one per ``interval`` saying how many dials failed
meanwhile, and one line when the member is reached again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TARGET_LOGGER = "p2pfed.libp2p"
"""The logger libp2p's records are re-emitted through."""
DIAL_LOGGER = "p2pfed.transport"
"""The logger of the folded ``waiting for`` lines."""
NOTICE_INTERVAL_S = 30.0
"""Least time between two ``still waiting`` lines for one member."""

log = logging.getLogger(DIAL_LOGGER)


EXPECTED_MUX_FAILURES: dict[str, float] = {}
"""Peer → until when (``time.monotonic``) it may dial us back (``transport.dialback``): such a
connection closes after the handshake, and our side may notice only after the answer came."""


def _is_dial_failure(record: logging.LogRecord) -> bool:
    """libp2p's line for a failed dial (``DialNotices`` reports it) or an asked-for dial-back.

    A dial-back closes after its handshake, before the muxer, by design.
    """
    message = record.getMessage()
    if record.name.startswith("libp2p.network.swarm") and message.startswith(
        "fail to upgrade mux for peer "
    ):
        return EXPECTED_MUX_FAILURES.get(message.rsplit(" ", 1)[-1], 0.0) > time.monotonic()
    return record.name.startswith("libp2p.transport.tcp") and message.startswith(
        "Failed to open TCP stream"
    )


def dial_reason(exc: BaseException) -> str:
    """The cause of a failed dial in a few words (``connection refused``).

    libp2p wraps the socket's error several layers deep (``MultiError.errors``, exception
    groups, causes); the first one with an errno names the cause best.
    """
    todo: list[BaseException] = [exc]
    seen: list[BaseException] = []
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno).lower()
        inner = getattr(current, "errors", None) or getattr(current, "exceptions", None) or ()
        todo += [e for e in (current.__cause__, current.__context__, *inner) if e is not None]
    last = seen[-1]
    return (str(last) or type(last).__name__).splitlines()[0][:160]


@dataclass
class _Waiting:
    since_notice: int
    last_notice: float


class DialNotices:
    """Folds failed dials into one line per member per interval; see the module docs."""

    def __init__(
        self,
        name_of: Callable[[str], str] = str,
        *,
        interval: float = NOTICE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name_of = name_of
        self._interval = interval
        self._clock = clock
        self._waiting: dict[str, _Waiting] = {}

    def failed(self, peer: str, addrs: Sequence[object], exc: BaseException) -> str | None:
        """A dial to ``peer`` failed: the line logged for it, or None inside the interval."""
        now = self._clock()
        state = self._waiting.get(peer)
        if state is not None and now - state.last_notice < self._interval:
            state.since_notice += 1
            return None
        where = ", ".join(str(a) for a in addrs) or "no address"
        line = f"waiting for {self._name_of(peer)} ({where}): {dial_reason(exc)}"
        if state is None:
            line += f"; retrying, next notice in {self._interval:g} s at the earliest"
        else:
            line += f" ({state.since_notice + 1} failed dials in {now - state.last_notice:.0f} s)"
        self._waiting[peer] = _Waiting(0, now)
        log.warning("%s", line, extra={"peer": self._name_of(peer)})
        return line

    def connected(self, peer: str) -> str | None:
        """A dial to ``peer`` succeeded: one line if it had been reported as waiting."""
        if self._waiting.pop(peer, None) is None:
            return None
        line = f"connected to {self._name_of(peer)}"
        log.info("%s", line, extra={"peer": self._name_of(peer)})
        return line


def roster_names(gate: object) -> Callable[[str], str]:
    """Member names from a roster gate (``gate.roster.members``); peer IDs for any other gate."""

    def name_of(peer: str) -> str:
        members = getattr(getattr(gate, "roster", None), "members", ())
        return next((str(m.name) for m in members if getattr(m, "peer_id", None) == peer), peer)

    return name_of


class _ForwardToP2PFed(logging.Handler):
    """Hands each libp2p record to ``p2pfed.libp2p``, which filters it by its own level."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(TARGET_LOGGER)
        if target.isEnabledFor(record.levelno) and not _is_dial_failure(record):
            target.handle(record)


def route_libp2p_logging(level: int = logging.WARNING) -> None:
    """Send the ``libp2p`` loggers' records through ``p2pfed.libp2p`` from now on.

    ``level`` is the least severe libp2p record that is produced at all: libp2p logs every frame
    at DEBUG, so WARNING (the default) keeps the hot path quiet.
    """
    root = logging.getLogger("libp2p")
    root.setLevel(level)
    root.propagate = False  # our handler forwards; propagating too would log twice
    if not any(isinstance(h, _ForwardToP2PFed) for h in root.handlers):
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_ForwardToP2PFed())
    # Some libp2p modules set their own level (the auto-connector logs at INFO every few
    # seconds), and with LIBP2P_DEBUG set libp2p cuts sub-loggers off from their parent:
    # reconnect them so every record takes the same route and obeys one level.
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
