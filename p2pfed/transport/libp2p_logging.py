"""Route py-libp2p's log records through p2pfed's logging.

Theory of operation: py-libp2p configures its ``libp2p`` logger with ``propagate=False`` and no
handler, so its warnings fall through to Python's last-resort handler and land on stderr,
bypassing whatever the application configured. ``route_libp2p_logging`` gives that logger one
handler that re-emits every record through the ``p2pfed.libp2p`` logger, so records reach the
handlers the application set on ``p2pfed`` or the root logger, keep their original logger name
(``libp2p.network.swarm``...), and obey the ``p2pfed.libp2p`` level. Calling it again is a no-op.
"""

from __future__ import annotations

import logging

TARGET_LOGGER = "p2pfed.libp2p"
"""The logger libp2p's records are re-emitted through."""


class _ForwardToP2PFed(logging.Handler):
    """Hands each libp2p record to ``p2pfed.libp2p``, which filters it by its own level."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(TARGET_LOGGER)
        if target.isEnabledFor(record.levelno):
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
