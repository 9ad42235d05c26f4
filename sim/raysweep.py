"""Sweeps on a Ray cluster: each point a Ray task, results streamed into the same store.

Theory of operation: the driver sends each point that is not already stored (same digest
file as ``sim.sweep``) as a task carrying only the scenario's canonical dictionary; the
worker rebuilds the ``Scenario`` and runs it exactly as the thread engine does (data split,
partition and initialisation generated from the scenario seed on the worker, one torch
thread), so its result JSON is byte-identical to a local run. Results are written by the
driver as they arrive (``ray.wait``), so an interrupted sweep resumes like a local one, and
returned in point order. A task whose worker dies (machine lost, process killed) is re-run
by Ray up to ``max_retries`` times; an error in the scenario or the user's code is not
retried and surfaces as its one-sentence ``ConfigError``.

Cost: each worker process imports torch and the simulator once, then reuses them for
every point it runs; ``warm_up`` imports them on every worker while the driver is still
submitting. Ray is optional (``pip install 'p2pfed[ray]'``); it is imported only here.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2pfed.durable import atomic_write
from p2pfed.errors import BrokenError, ConfigError, LocalError, P2PFedError
from sim.results import RunResult, read_result
from sim.sweep import SweepPoint, point_path

INSTALL_HINT = "--engine ray needs Ray: install it with pip install 'p2pfed[ray]'"
#: Re-runs of a point whose worker died before it finished.
MAX_RETRIES = 3
#: How long --address HOST:PORT may take to accept a TCP connection.
PROBE_TIMEOUT_S = 5.0


def require_ray() -> Any:
    """The ``ray`` module, or a ``ConfigError`` saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def run_remote(raw: dict[str, Any], threads: int) -> str:
    """On a worker: one point from its canonical scenario dictionary; its result JSON."""
    from sim.scenario import scenario_from_dict
    from sim.sweep import run_point

    return run_point(scenario_from_dict(raw), None, threads).to_json()


def warm_up() -> int:
    """On a worker: import torch and the simulator once, before the first point arrives."""
    import os

    import sim.engine  # noqa: F401  (the import is the point)

    return os.getpid()


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT``) or start a local one.

    Returns whether this call started Ray (the caller then shuts it down).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address and address != "auto" and "://" not in address:
        _probe(address)
    try:
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "a local cluster"
        raise ConfigError(f"cannot reach Ray at {where} ({exc})") from None
    return True


def _probe(address: str) -> None:
    """Fail fast on an unreachable ``HOST:PORT`` (Ray itself waits minutes for it)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address {address!r} must be auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach Ray at {address} ({exc.strerror or exc}); is `ray start --head` "
            "running there?"
        ) from None


def run_sweep_ray(
    points: Sequence[SweepPoint],
    out: Path,
    on_point: Callable[[SweepPoint, bool], None] | None = None,
    threads: int = 1,
    address: str | None = None,
    max_retries: int = MAX_RETRIES,
) -> list[RunResult]:
    """Run the points not stored in ``out`` as Ray tasks; every point's result, in order.

    ``on_point(point, stored)`` is called once per point: at once for a stored one, when
    its result is written for the others (completion order).
    """
    ray = require_ray()
    results: dict[int, RunResult] = {}
    pending: list[int] = []
    for index, point in enumerate(points):
        stored = read_result(point_path(out, point), point.digest)
        if stored is None:
            pending.append(index)
            continue
        results[index] = stored
        if on_point is not None:
            on_point(point, True)
    if not pending:
        return [results[i] for i in range(len(points))]
    started = connect(address)
    try:
        task = ray.remote(num_cpus=threads, max_retries=max_retries, retry_exceptions=False)
        remote = task(run_remote)
        workers = max(1, min(len(pending), int(ray.cluster_resources().get("CPU", 1))))
        warm = ray.remote(num_cpus=threads)(warm_up)
        ray.get([warm.remote() for _ in range(workers)])
        waiting = {remote.remote(points[i].scenario.to_dict(), threads): i for i in pending}
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            for ref in ready:
                index = waiting.pop(ref)
                results[index] = _store(ray, ref, points[index], out)
                if on_point is not None:
                    on_point(points[index], False)
    finally:
        if started:
            ray.shutdown()
    return [results[i] for i in range(len(points))]


def _store(ray: Any, ref: Any, point: SweepPoint, out: Path) -> RunResult:
    """Fetch one task's result, check it is the point's, and write it atomically."""
    try:
        text = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, P2PFedError):
            raise cause from None
        raise LocalError(f"sweep point {point.label} seed={point.seed} failed: {cause}") from None
    except ray.exceptions.RayError as exc:
        raise BrokenError(
            f"sweep point {point.label} seed={point.seed} was lost {MAX_RETRIES + 1} times "
            f"({type(exc).__name__})"
        ) from None
    result = RunResult.from_json(text)
    if result.digest != point.digest:
        raise BrokenError(f"a Ray worker returned another point for {point.label}")
    path = point_path(out, point)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode(), 0o644)
    return result
