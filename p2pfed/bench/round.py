"""``p2pfed bench round``: whole rounds of a big model through real daemons (JSON).

Theory of operation: for each privacy case (``off``, ``dpsgd``, ``ddp``) a fresh consortium
is enrolled in a temporary folder (``p2pfed.consortium.enrol``: keys, signed roster, ports,
one slice of scikit-learn's breast-cancer table per member) and each member's config
declares its model *by reference* — ``[model] factory = "p2pfed.training.sized:mlp"`` (or
``cnn``) with ``params`` — with secure aggregation on. N ``p2pfed run`` processes start on
127.0.0.1 and run ``--rounds`` rounds; while they run, each one's ``/proc/<pid>/status`` is
polled for its peak resident set (``VmHWM``, read until the process exits, so growth in its
last poll interval is missed) and its ``status.json`` for when it first says ``running``
(listening, with its cohort built: ``start_s``).

Per case, from what the daemons themselves recorded: ``round_s`` and ``stages_s`` from each
audit log's ``round_end`` entries (per round the slowest member, then the mean over the
rounds; the secure round's aggregate stage is split into mask — key agreement, shares,
encoding and masking —, all-reduce, unmask and decode), ``committed`` rounds (the fewest
any member committed; ``committed_per_member`` lists each), ``bytes_per_peer`` (the most
any member sent per round it committed, from ``status.json``) against ``bytes_ideal`` =
2(n−1)/n·M for the M bytes of ring words one update takes, and ``round_cpu_s``: per member,
the CPU seconds (all its threads, from ``/proc/<pid>/stat`` polled with the memory) of a
committed round after the first, which unlike wall seconds keep their value on a loaded
machine. ``load_avg`` is the machine's
load before and after: the machine is shared, and nothing here asserts a time.
``--link-mbps`` and ``--stage-max-s`` set the members' ``[rounds] link_mbps`` (the rate
their first stage deadlines assume) and ``stage_timeout_max_s`` (the ceiling, 600 s here,
so a loaded machine's slow ring still commits rather than measuring the config's failure
detection).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfed.bench._timing import process_cpu_s, round_ends, stage_pairs
from p2pfed.errors import BrokenError, ConfigError
from p2pfed.output import print_json
from p2pfed.settings import comma_list

if TYPE_CHECKING:  # loaded by run() only: `p2pfed --help` imports every bench module
    from p2pfed.consortium import Consortium

NAME = "round"
HELP = "Whole secure rounds of a big model (by reference) through real daemons (JSON)."

PRIVACY = {"off": "off", "dpsgd": "dp-sgd", "ddp": "distributed"}
MODELS = ("mlp", "cnn")
_POLL_S = 0.1
FEATURES = 30
"""Columns of the breast-cancer table the benchmark consortia train on."""


_privacy_list = comma_list(str, f"one of {', '.join(PRIVACY)}", PRIVACY.__contains__)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the model, consortium and privacy options."""
    parser.add_argument("--params", type=float, default=10e6, help="model parameters (10e6)")
    parser.add_argument("--model", choices=MODELS, default="mlp", help="mlp or cnn (mlp)")
    parser.add_argument("--peers", type=int, default=4, help="member daemons (4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per case (2)")
    parser.add_argument(
        "--privacy", type=_privacy_list, default=["off"], help="cases: off,dpsgd,ddp (off)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="minibatch rows (16)")
    parser.add_argument("--local-steps", type=int, default=4, help="local steps a round (4)")
    parser.add_argument(
        "--link-mbps",
        type=float,
        default=100.0,
        help="[rounds] link_mbps: the link rate assumed until one is measured (100)",
    )
    parser.add_argument(
        "--stage-max-s",
        type=float,
        default=600.0,
        help="[rounds] stage_timeout_max_s: the longest stage deadline (600)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case (900)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep each case's folder (logs) under this one"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the default)")
    parser.set_defaults(func=run)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _progress(message: str) -> None:
    print(f"bench round: {message}", file=sys.stderr, flush=True)


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.params <= 1e9:
        raise ConfigError(f"--params must lie in 1..1e9, got {args.params:g}")
    if not 3 <= args.peers <= 16:
        raise ConfigError(
            f"--peers must lie in 3..16 (secure aggregation needs 3), got {args.peers}"
        )
    if not 1 <= args.rounds <= 100:
        raise ConfigError(f"--rounds must lie in 1..100, got {args.rounds}")
    if args.batch_size < 1 or args.local_steps < 1:
        raise ConfigError("--batch-size and --local-steps must be at least 1")
    if not (args.link_mbps > 0 and args.stage_max_s > 0):
        raise ConfigError("--link-mbps and --stage-max-s must be positive")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {args.timeout:g}")


def run(args: argparse.Namespace) -> int:
    """Run every privacy case and print one JSON document."""
    _check(args)
    load_before = _load()
    cases = []
    for privacy in args.privacy:
        _progress(f"{privacy}: {args.peers} daemons, {args.params:g} parameters")
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            kept = Path(tempfile.mkdtemp(prefix=f"{privacy}-", dir=args.keep))
            cases.append(_case(kept, privacy, args))
        else:
            with tempfile.TemporaryDirectory(prefix="p2pfed-bench-round-") as tmp:
                cases.append(_case(Path(tmp), privacy, args))
    print_json(
        {
            "bench": "round",
            "cases": cases,
            "load_avg": {"before": load_before, "after": _load()},
            "cpus": os.cpu_count(),
            "transport": "libp2p (Noise, Yamux) on 127.0.0.1, one daemon process per member",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return 0


def consortium(root: Path, privacy: str, args: argparse.Namespace) -> Consortium:
    """Enrol ``args.peers`` members with configs for this case (a model by reference)."""
    import numpy as np

    from p2pfed.consortium import Consortium, enrol, member_config, render_toml
    from p2pfed.training.data import dirichlet_split, load_builtin

    rng = np.random.default_rng(0)
    data = load_builtin("breast_cancer")
    parts = dirichlet_split(data.y, args.peers, 1.0, rng, min_size=60)
    slices = [(f"hospital-{i}", data.subset(idx, f"h{i}")) for i, idx in enumerate(parts)]
    hospitals, _admin = enrol(root, "bench-round", slices)
    center, scale = data.x.mean(axis=0), data.x.std(axis=0) + 1e-6
    shares = np.bincount(data.y, minlength=2) / len(data.y)
    shares[-1] = 1.0 - shares[:-1].sum()
    for h in hospitals:
        rows = int(h.rows * 0.8)  # the local training part
        q = min(1.0, args.batch_size / rows)
        tables = member_config(
            h,
            rounds=args.rounds,
            schema={
                "features": list(data.feature_names),
                "labels": [0, 1],
                "label_distribution": shares.tolist(),
                "center": center.astype(float).tolist(),
                "scale": scale.astype(float).tolist(),
            },
            validation={"min_samples": 20, "max_label_skew": 0.9},
            training={
                "local_steps": args.local_steps,
                "batch_size": args.batch_size,
                "learning_rate": 0.05,
            },
            privacy=privacy_table(privacy, q, args.local_steps),
        )
        # The stages of a big model's round may need more than the default ceiling (the
        # round timeout); a benchmark measures rounds that commit, not failure detection.
        tables["rounds"] |= {"link_mbps": args.link_mbps, "stage_timeout_max_s": args.stage_max_s}
        tables |= model_tables(args.model, args.params)
        h.config.write_text(render_toml(tables, f"bench round, {privacy}, {h.name}"))
    return Consortium(root, hospitals, f"bench round ({privacy})")


def privacy_table(case: str, q: float = 1.0, steps: int = 1) -> dict[str, Any]:
    """A member's ``[privacy]`` for ``case`` (a key of ``PRIVACY``); ``q``, ``steps``: DP-SGD's."""
    found: dict[str, Any] = {"mode": PRIVACY[case], "epsilon_budget": 1000.0, "delta": 1e-5}
    if case == "dpsgd":
        found |= {"sample_rate": q, "steps_per_round": steps, "noise_multiplier": 1.0}
    return found


def _case(root: Path, privacy: str, args: argparse.Namespace) -> dict[str, Any]:
    from p2pfed.consortium import launch, stop

    c = consortium(root, privacy, args)
    watcher = _Watcher(c)
    try:
        launch(c)
        watcher.started = time.monotonic()
        watcher.follow(args.timeout)
    finally:
        stop(c)
    failed = [h.name for h in c.hospitals if h.process is None or h.process.returncode != 0]
    if failed:
        tail = (c.hospitals[0].folder / "daemon.log").read_text(errors="replace")
        last = (tail.strip().splitlines() or ["no output"])[-1]
        raise BrokenError(f"{', '.join(failed)} did not finish the {privacy} case: {last}")
    return _figures(c, privacy, args, watcher)


class _Watcher:
    """Polls each daemon's peak RSS and the moment its status first says ``running``."""

    def __init__(self, c: Consortium) -> None:
        self.c = c
        self.started = 0.0
        self.peak_kb = [0] * len(c.hospitals)
        self.start_s: list[float | None] = [None] * len(c.hospitals)
        self.rss: list[list[tuple[float, int]]] = [[] for _ in c.hospitals]
        """Per daemon: (wall time, VmRSS KiB) at every poll, to attribute memory to stages."""
        self.cpu: list[list[tuple[float, float]]] = [[] for _ in c.hospitals]
        """Per daemon: (wall time, CPU seconds so far, all its threads) at every poll."""

    def follow(self, timeout: float) -> None:
        """Poll until every daemon has exited; ``BrokenError`` after ``timeout``."""
        from p2pfed.consortium import statuses

        deadline = self.started + timeout
        while any(h.process is not None and h.process.poll() is None for h in self.c.hospitals):
            if time.monotonic() > deadline:
                raise BrokenError(
                    f"the daemons did not finish within {timeout:g} s (--timeout); "
                    f"see the daemon logs under {self.c.root}"
                )
            for i, h in enumerate(self.c.hospitals):
                if h.process is not None:
                    hwm, rss = _vm_kb(h.process.pid)
                    self.peak_kb[i] = max(self.peak_kb[i], hwm)
                    if rss:
                        self.rss[i].append((time.time(), rss))
                    cpu = process_cpu_s(h.process.pid)
                    if cpu is not None:
                        self.cpu[i].append((time.time(), cpu))
            if None in self.start_s:
                for i, status in enumerate(statuses(self.c)):
                    if self.start_s[i] is None and status.get("state") == "running":
                        self.start_s[i] = time.monotonic() - self.started
            time.sleep(_POLL_S)


def _vm_kb(pid: int) -> tuple[int, int]:
    """Peak and current resident set of process ``pid`` in KiB (0, 0 once it has gone)."""
    found = {"VmHWM:": 0, "VmRSS:": 0}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line[:6] in found:
                    found[line[:6]] = int(line.split()[1])
    except OSError:
        pass
    return found["VmHWM:"], found["VmRSS:"]


def _cpu_per_round(
    ends: list[list[dict[str, Any]]], samples: list[list[tuple[float, float]]], rounds: set[int]
) -> list[float | None]:
    """Per member, the mean CPU seconds (all its threads) of its rounds in ``rounds``.

    Each round's window runs from its start (its ``round_end`` time less its duration) to
    its end, read off the polled CPU counters (to the poll interval). Unlike wall seconds,
    CPU seconds hold their value on a loaded machine: the comparison figure of a change.
    """

    def at(polled: list[tuple[float, float]], t: float) -> float:
        before = [cpu for when, cpu in polled if when <= t]
        return before[-1] if before else polled[0][1]

    out: list[float | None] = []
    for member, polled in zip(ends, samples, strict=True):
        used = [
            at(polled, float(e["ts"])) - at(polled, float(e["ts"]) - float(e["body"]["duration_s"]))
            for e in member
            if int(e["body"]["round"]) in rounds and polled
        ]
        out.append(round(sum(used) / len(used), 2) if used else None)
    return out


def _rss_by_stage(
    ends: list[list[dict[str, Any]]], samples: list[list[tuple[float, int]]]
) -> dict[str, float]:
    """Per stage, the highest VmRSS polled while any member was in it (MB), and at round start.

    A round's stages are laid end to end back from its ``round_end`` entry's time (written
    as the round ends): a profile of where the memory goes, to the poll interval (each
    window starts one poll early).
    """
    peak: dict[str, int] = {}
    for member, polled in zip(ends, samples, strict=True):
        for entry in member:
            at = float(entry["ts"]) - float(entry["body"]["duration_s"])
            windows = [("round start", at, at + _POLL_S)]
            for name, seconds in stage_pairs(entry["body"].get("stages_s")):
                windows.append((name, at, at + seconds))
                at += seconds
            for name, lo, hi in windows:
                # From one poll before: a stage shorter than the interval has a value too.
                inside = [kb for t, kb in polled if lo - _POLL_S <= t <= hi]
                peak[name] = max([peak.get(name, 0), *inside])
    return {name: round(kb / 1024, 1) for name, kb in peak.items()}


def _figures(
    c: Consortium, privacy: str, args: argparse.Namespace, watcher: _Watcher
) -> dict[str, Any]:
    from p2pfed.consortium import statuses

    logged = [round_ends(h.state) for h in c.hospitals]
    ends = [[e["body"] for e in member] for member in logged]
    committed = [[e for e in member if e.get("outcome") == "completed"] for member in ends]
    done = min(len(member) for member in committed)
    per_round: dict[int, list[dict[str, Any]]] = {}
    for member in committed:
        for e in member:
            per_round.setdefault(int(e["round"]), []).append(e)
    full = [entries for _, entries in sorted(per_round.items()) if len(entries) == len(ends)]
    rounds_s = [max(float(e["duration_s"]) for e in entries) for entries in full]
    # CPU of the rounds after the first (whose start waited for imports and the others).
    steady = {int(entries[0]["round"]) for entries in full[1:] or full}
    completed = [
        [e for e in member if e["body"].get("outcome") == "completed"] for member in logged
    ]
    round_cpu = _cpu_per_round(completed, watcher.cpu, steady)
    stages: dict[str, float] = {}  # per stage: the slowest member's, summed over the rounds
    for entries in full:
        timed = [dict(stage_pairs(e.get("stages_s"))) for e in entries]
        for name in {name for member in timed for name in member}:
            slowest = max(member.get(name, 0.0) for member in timed)
            stages[name] = stages.get(name, 0.0) + slowest
    final = statuses(c)
    # Per member: bytes it sent over the rounds it committed (a member that missed a round
    # and adopted the others' model sent nothing for it).
    sent = [
        int(s.get("bytes_sent", 0)) / len(member)
        for s, member in zip(final, committed, strict=True)
        if member
    ]
    dimension = model_words(args.model, args.params)
    ideal = 2 * (args.peers - 1) / args.peers * dimension * 4
    return {
        "privacy": privacy,
        "model": args.model,
        "params": dimension,
        "peers": args.peers,
        "rounds": args.rounds,
        "committed": done,
        "round_s": round(sum(rounds_s) / len(rounds_s), 3) if rounds_s else None,
        "rounds_s": [round(s, 3) for s in rounds_s],
        "stages_s": {k: round(v / len(full), 3) for k, v in stages.items()} if full else {},
        "round_cpu_s": round_cpu,
        "committed_per_member": [len(member) for member in committed],
        "bytes_per_peer": int(max(sent, default=0)),
        "bytes_ideal": int(ideal),
        "bytes_over_ideal": round(max(sent, default=0) / ideal, 4),
        "peak_rss_mb": [round(kb / 1024, 1) for kb in watcher.peak_kb],
        "rss_by_stage_mb": _rss_by_stage(logged, watcher.rss),
        "model_mb": round(dimension * 4 / 1e6, 1),
        "start_s": [None if s is None else round(s, 2) for s in watcher.start_s],
        "epsilon": [s.get("epsilon") for s in final],
        "test_accuracy": [s.get("test_accuracy") for s in final],
    }


def model_tables(model: str, params: float) -> dict[str, dict[str, Any]]:
    """A member's ``[model]`` and ``[model.args]``: ``model`` (``MODELS``) by reference."""
    return {
        "model": {"factory": f"p2pfed.training.sized:{model}"},
        "model.args": {"n_features": FEATURES, "params": int(params)},
    }


def model_words(model: str, params: float) -> int:
    """The exact parameter count of the model the daemons build (the ring's words)."""
    from p2pfed.training import sized

    build = sized.mlp if model == "mlp" else sized.cnn
    return sized.count(build(FEATURES, int(params)))
