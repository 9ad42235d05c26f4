"""``p2pfed bench startup``: how soon a real ``p2pfed run`` listens, against Python itself (JSON).

Theory of operation: a demo consortium is enrolled once in a temporary folder (DP-SGD and
secure aggregation on, as ``p2pfed demo`` writes it); each repeat copies one member's
pristine folder (a first start: no ledger, checkpoint or audit log yet), launches
``python -m p2pfed run`` on it alone and polls its listen port with TCP connects every
10 ms. ``listen_s`` is launch until the port first accepts; ``listen_cpu_s`` and
``listen_rss_mb`` are the daemon's CPU seconds (user + system) and resident set at that
moment, from ``/proc``; ``ready_s`` is launch until its audit log records
``daemon_start`` (privacy plan checked, torch imported, model and optimizer built). The
daemon is then stopped with SIGTERM. The baselines run in the same invocation, alternating
with the daemon: ``python -c pass`` and ``python -c "import torch"``, launch to exit (wall
and CPU seconds, ``*_s`` and ``*_cpu_s``). Each
figure is the median over ``--repeats``; ``load_avg`` is the machine's load before and
after, since a shared machine inflates wall seconds (CPU seconds much less).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pfed.errors import BrokenError, ConfigError
from p2pfed.output import print_json

NAME = "startup"
HELP = "Seconds from `p2pfed run` to listening and to a built model, against python itself (JSON)."

TARGET_S = 3.0
"""Issue 20 item 5: a daemon listens within this many seconds."""
_POLL_S = 0.01


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options."""
    parser.add_argument("--repeats", type=int, default=5, help="launches of each kind (5)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per launch (300)")
    parser.add_argument("--json", action="store_true", help="print JSON (the default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Enrol a demo consortium, time the launches and print one JSON document."""
    if not 1 <= args.repeats <= 100:
        raise ConfigError(f"--repeats must lie in 1..100, got {args.repeats}")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {args.timeout:g}")
    from p2pfed.demo import DemoSettings, build_consortium

    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: list[dict[str, float]] = []
    baselines: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="p2pfed-bench-startup-") as tmp:
        root = Path(tmp)
        member = build_consortium(root / "demo", DemoSettings(peers=3, rounds=1)).hospitals[0]
        for i in range(args.repeats):
            for name, code in (("python_pass", "pass"), ("python_import_torch", "import torch")):
                wall, cpu = _python(code)
                baselines.setdefault(f"{name}_s", []).append(wall)
                baselines.setdefault(f"{name}_cpu_s", []).append(cpu)
            folder = root / f"run-{i}"
            shutil.copytree(member.folder, folder, ignore=shutil.ignore_patterns("state"))
            runs.append(_launch(folder, member.port, args.timeout))
    figures = {key: _median([r[key] for r in runs]) for key in runs[0]}
    print_json(
        {
            "bench": "startup",
            "config": "p2pfed demo member: DP-SGD, secure aggregation, logistic model, 3 members",
            "repeats": args.repeats,
            "target_listen_s": TARGET_S,
            **figures,
            **{key: _median(values) for key, values in baselines.items()},
            "runs": runs,
            "baselines": {k: [round(v, 3) for v in vs] for k, vs in baselines.items()},
            "load_avg": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
            "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return 0


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _python(code: str) -> tuple[float, float]:
    """Seconds from launching ``python -c code`` to its exit, and its CPU seconds."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _launch(folder: Path, port: int, timeout: float) -> dict[str, float]:
    """Start ``p2pfed run`` in ``folder``; times to listening and to ``daemon_start``."""
    audit = folder / "state" / "audit.jsonl"
    with open(folder / "daemon.log", "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "p2pfed", "run", "--config", str(folder / "config.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _until(lambda: _accepts(port), process, timeout, folder)
            listen_s = time.monotonic() - started
            cpu_s, rss_mb = _cpu_and_rss(process.pid)
            _until(
                lambda: audit.exists() and b"daemon_start" in audit.read_bytes(),
                process,
                timeout,
                folder,
            )
            ready_s = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return {
        "listen_s": round(listen_s, 3),
        "listen_cpu_s": round(cpu_s, 3),
        "listen_rss_mb": round(rss_mb, 1),
        "ready_s": round(ready_s, 3),
    }


def _until(done: Any, process: subprocess.Popen[bytes], timeout: float, folder: Path) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if process.poll() is not None:
            raise BrokenError(
                f"the daemon exited ({process.returncode}); see {folder / 'daemon.log'}"
            )
        if time.monotonic() > deadline:
            raise BrokenError(f"the daemon was not ready within {timeout:g} s (--timeout)")
        time.sleep(_POLL_S)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
    except OSError:
        return False
    return True


def _cpu_and_rss(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and resident MB of process ``pid`` now."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss / 1024
