"""Result files: per-round metrics as CSV, one JSON document per run, written atomically.

Theory of operation: a run's result is its scenario (canonical form), the scenario digest,
the topology's theoretical per-round contraction ρ (``topologies.analyze``; 0 for exact
averaging, 1 for no communication) and the metric records. It is written to a temporary
file in the target directory and renamed over the final name, so a crash leaves either the
old file or the new one, never half of one; a sweep trusts a point file only if it parses
and its stored digest matches the point's. Wall-clock times are kept out of result files so
two runs of one seed give byte-identical files. Parquet is written alongside CSV only when
``pyarrow`` happens to be installed (it is not a dependency).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import importlib.util
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import topologies
from sim.scenario import Scenario


@dataclasses.dataclass(frozen=True, slots=True)
class RoundRecord:
    """Metrics after one round (round 0 = the initial state)."""

    round: int
    accuracy_mean: float
    accuracy_min: float
    accuracy_max: float
    average_model_accuracy: float
    test_loss_mean: float
    train_loss_mean: float
    consensus_distance: float
    bytes_sent_mean: float
    bytes_sent_max: float
    bytes_cumulative_mean: float
    comm_time_s: float
    active_peers: int
    epsilon: float | None


RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(RoundRecord))


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    """Everything a finished run leaves behind (no wall-clock times: reproducible bytes)."""

    digest: str
    scenario: dict[str, Any]
    rho: float
    records: tuple[RoundRecord, ...]
    #: Sites the partition left without a training example (never in a mean; reported).
    empty_sites: int = 0

    def to_json(self) -> str:
        payload = {
            "digest": self.digest,
            "scenario": self.scenario,
            "rho": None if math.isnan(self.rho) else self.rho,
            "records": [_record_dict(r) for r in self.records],
            "empty_sites": self.empty_sites,
        }
        return json.dumps(payload, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        payload = json.loads(text)
        records = tuple(
            RoundRecord(**{k: v if k == "epsilon" else _from_json_float(v) for k, v in r.items()})
            for r in payload["records"]
        )
        rho = math.nan if payload["rho"] is None else float(payload["rho"])
        empty = int(payload.get("empty_sites", 0))
        return cls(payload["digest"], payload["scenario"], rho, records, empty)


def _record_dict(record: RoundRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in RECORD_FIELDS:
        value = getattr(record, key)
        out[key] = None if isinstance(value, float) and math.isnan(value) else value
    return out


def _from_json_float(value: Any) -> Any:
    return math.nan if value is None else value


#: Above this many peers ρ is not computed (ARPACK on n = 10,000 takes tens of seconds,
#: more than the simulation); ``p2pfed topology analyze`` gives it on demand.
RHO_MAX_N = 4096


def theoretical_rho(scenario: Scenario, topology: Any | None, model_size: int) -> float:
    """Per-round contraction of the mixing step: topologies' ρ, 0 (exact) or 1 (none).

    NaN when the graph has more than ``RHO_MAX_N`` nodes (stored as null).
    """
    algo = scenario.algorithm.name
    if algo in ("fedavg", "fedprox", "scaffold"):
        return 0.0
    if algo == "local" or topology is None:
        return 1.0
    if scenario.n > RHO_MAX_N:
        return math.nan
    return float(topologies.analyze(topology, model_bytes=model_size * 4).rho)


def read_result(path: Path, digest: str | None = None) -> RunResult | None:
    """A stored result, or None if missing, unreadable or for another digest."""
    try:
        result = RunResult.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if digest is not None and result.digest != digest:
        return None
    return result


def records_csv(
    records: Sequence[RoundRecord], extra: dict[str, Any] | None = None, header: bool = True
) -> str:
    """Records as CSV text; ``extra`` columns (e.g. the sweep point) come first."""
    extra = extra or {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow([*extra, *RECORD_FIELDS])
    for record in records:
        row = [*extra.values()]
        for key in RECORD_FIELDS:
            value = getattr(record, key)
            row.append(
                "" if value is None or (isinstance(value, float) and math.isnan(value)) else value
            )
        writer.writerow(row)
    return buf.getvalue()


def maybe_parquet(csv_path: Path) -> Path | None:
    """Also write ``csv_path`` as Parquet when pyarrow is installed; returns the path."""
    if importlib.util.find_spec("pyarrow") is None:
        return None
    pacsv: Any = importlib.import_module("pyarrow.csv")
    parquet: Any = importlib.import_module("pyarrow.parquet")
    out = csv_path.with_suffix(".parquet")
    parquet.write_table(pacsv.read_csv(str(csv_path)), str(out))
    return out
