"""Structured logging: plain text for people, or one JSON object per line for machines.

Theory of operation: ``setup_logging`` installs one handler on the root logger (replacing
the one it installed before, never anyone else's) with either a plain formatter or
``JsonFormatter``. The JSON form is one object per line with ``ts`` (UTC, ISO 8601, ms),
``level``, ``logger``, ``msg`` and every ``extra=`` field the caller passed, so a log
shipper can index ``round`` or ``peer`` without parsing text. Loggers that do not
propagate to the root (py-libp2p's ``libp2p`` logger writes straight to stderr) can be
captured too, and ``warnings.warn`` is routed through logging while the handler is installed,
so the JSON stream is not interleaved with stray text lines.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, Any

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_MARK = "_p2pfed_handler"
_displaced: dict[str, list[logging.Handler]] = {}
"""Handlers taken off captured loggers, put back by ``remove_logging``."""
_hooks: dict[str, Any] = {}
"""The interpreter's hooks ``setup_logging`` replaced, put back by ``remove_logging``."""
_hook_log = logging.getLogger("p2pfed.uncaught")


CONTEXT = ("round", "peer")
"""Record fields the plain format appends when the message does not already name them."""


class PlainFormatter(logging.Formatter):
    """``ts LEVEL logger: msg``, then ``(round N, peer X)`` for the fields the text omits."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        message = record.getMessage()
        named = [
            f"{key} {value}"
            for key in CONTEXT
            if (value := getattr(record, key, None)) is not None
            and f"{key} {value}" not in message
            and not (key == "peer" and str(value) in message)
        ]
        if not named:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the line
        return f"{head} ({', '.join(named)}){sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, extras (and exc if any)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # default=str: an extra that JSON cannot hold (a Path, an enum) still logs.
        return json.dumps(doc, default=str, ensure_ascii=False, allow_nan=True)


def setup_logging(
    level: int | str = "INFO",
    *,
    json_format: bool = False,
    stream: IO[str] | None = None,
    capture: Sequence[str] = ("libp2p",),
) -> logging.Handler:
    """Install p2pfed's handler on the root logger (and on ``capture`` loggers); returns it.

    Calling it again replaces the handler it installed before. ``remove_logging`` undoes it.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else PlainFormatter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    remove_logging()
    root.addHandler(handler)
    root.setLevel(level)
    # warnings.warn() writes plain text to stderr; as records they take the same format.
    logging.captureWarnings(True)
    # So do "Exception ignored in …" (an async generator closed late under trio) and a
    # thread's uncaught error: as records, they cannot break a JSON stream either.
    _hooks.setdefault("unraisable", sys.unraisablehook)
    _hooks.setdefault("thread", threading.excepthook)
    sys.unraisablehook = _log_unraisable
    threading.excepthook = _log_thread_error
    for name in capture:
        logger = logging.getLogger(name)
        if not logger.propagate:
            _displaced[name] = list(logger.handlers)
            for old in _displaced[name]:
                logger.removeHandler(old)
            logger.addHandler(handler)
    return handler


def remove_logging() -> None:
    """Remove the handler ``setup_logging`` installed and give captured loggers theirs back."""
    logging.captureWarnings(False)
    if "unraisable" in _hooks:
        sys.unraisablehook = _hooks.pop("unraisable")
    if "thread" in _hooks:
        threading.excepthook = _hooks.pop("thread")
    for logger in [logging.getLogger(), *_all_loggers()]:
        for handler in list(logger.handlers):
            if getattr(handler, _MARK, False):
                logger.removeHandler(handler)
    for name, handlers in _displaced.items():
        logger = logging.getLogger(name)
        for old in handlers:
            # Someone may have installed the same kind of handler meanwhile (libp2p routing
            # does when a transport starts): giving ours back too would log every record twice.
            if not any(type(h) is type(old) for h in logger.handlers):
                logger.addHandler(old)
    _displaced.clear()


def _all_loggers() -> list[logging.Logger]:
    return [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]


def _log_unraisable(info: sys.UnraisableHookArgs) -> None:
    exc = info.exc_value
    where = f" in {info.object!r}" if info.object is not None else ""
    _hook_log.error(
        "%s%s: %r",
        info.err_msg or "Exception ignored",
        where,
        exc,
        exc_info=(info.exc_type, exc, info.exc_traceback) if exc is not None else None,
    )


def _log_thread_error(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _hook_log.error(
        "uncaught error in thread %s: %r",
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )
