"""How a node starts and ends: its secret audit salt, and how a run's end is recorded.

Theory of operation: the audit salt is per node and secret (``audit.salt`` beside the
identity key, 0600), so it is loaded here rather than from the shared config. A run ends
finished, out of budget, stopped (cancelled: by a signal, delivered by trio inside an
exception group) or in error; ``ended`` tells these apart so that ``status.json`` and the
audit log's ``daemon_stop`` say which (``p2pfed.governance.status_file.process_alive`` then
tells a live daemon from a status file left by a dead one). ``expiry_guard`` is what the daemon's
peer checks before each round: the roster's expiry in status and metrics, a warning logged
once per threshold, and ``RosterError(EXPIRED)`` once it has passed (``roster_expired``
then records the stop in one sentence).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2pfed.config import Config
from p2pfed.errors import ConfigError
from p2pfed.governance.audit import SALT_FILE, create_salt_file, read_salt_file
from p2pfed.governance.metrics import NodeMetrics
from p2pfed.identity import RosterError, RosterGate, RosterProblem
from p2pfed.identity.expiry import ExpiryWatch

log = logging.getLogger("p2pfed.daemon")


def load_audit_salt(config: Config, audit_log: Path) -> bytes:
    """This node's secret audit salt, beside its identity key (made if an old install lacks it)."""
    if config.governance.audit_salt:
        raise ConfigError(
            "[governance] audit_salt must not be in the config (configs are shared, the salt is "
            f"secret); remove it: the node keeps its own in {SALT_FILE} beside its identity key"
        )
    path = config.path(config.node.identity).with_name(SALT_FILE)
    if not path.exists():
        if audit_log.exists():
            log.warning("audit salt %s was missing; a new one hashes peers from now on", path)
        return create_salt_file(path)
    return read_salt_file(path)


def ended(status: dict[str, Any], exc: BaseException) -> None:
    """Record in ``status`` how the run ended on ``exc``: stopped (cancelled) or error."""
    stops = (trio.Cancelled, KeyboardInterrupt)
    rest: BaseException | None = exc
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(stops)[1]
    elif isinstance(exc, stops):
        rest = None
    if rest is None:
        status["state"] = "stopped"
        status.setdefault("stop_reason", "cancelled")
        return
    while isinstance(rest, BaseExceptionGroup):  # name the first real error, not the group
        rest = rest.exceptions[0]
    status |= {"state": "error", "error": str(rest) or type(rest).__name__}
    status["stop_reason"] = f"error: {status['error']}"


def stop_reason(status: dict[str, Any]) -> str:
    """Why the daemon stops, for the audit log's ``daemon_stop``."""
    state = str(status.get("state", "stopped"))
    if state == "starting" and not status.get("stop_reason"):
        return "error during start-up"  # the run never began: an error, logged as such
    return str(status.get("stop_reason") or state.replace("-", " "))


def expiry_guard(
    gate: RosterGate,
    status: dict[str, Any],
    metrics: NodeMetrics | None,
    on_warning: Callable[[], None] = lambda: None,
) -> Callable[[], None]:
    """A ``Peer`` guard: roster expiry into ``status`` and ``metrics``; raises once expired.

    ``on_warning`` runs after a new warning was logged (the daemon writes ``status.json``).
    """
    watch = ExpiryWatch(lambda: gate.roster, gate.now)

    def guard() -> None:
        try:
            state = watch.check()
        except RosterError:
            if metrics is not None:
                metrics.set_roster_expiry(0.0)
            raise
        status.update(state.to_status())
        if metrics is not None:
            metrics.set_roster_expiry(state.seconds_left)
        if state.new_warning:
            log.warning("%s", state.warning)
            on_warning()

    return guard


def roster_expired(status: dict[str, Any], exc: RosterError) -> bool:
    """Record an expired roster as the run's end in ``status``; False for other problems."""
    if exc.problem is not RosterProblem.EXPIRED:
        return False
    status |= {"state": "roster-expired", "error": str(exc), "stop_reason": str(exc)}
    log.error("%s", exc)
    return True
