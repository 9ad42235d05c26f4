"""The lung study on real daemons: keys, signed roster and protocol, one process per site.

Theory of operation: ``setup`` does what the consortium's admin does once: a key and a
127.0.0.1 port per site, the roster signed by the admin, and the study protocol (covariates
with their agreed centres and scales, the Cox model, local steps, learning rate, rounds,
distributed DP with ε and δ) signed by the same admin; each site's own patients go to its
own file, covariates as recorded. ``run_sites`` starts ``p2pfed.studies.lung_site`` once per
site, waits for all of them (each site's log goes to ``site-K.log``), and checks that every
site committed the same model (digest) in every round it reports, before returning the
consortium's β per round, the rounds no site committed with the reasons they gave, and the
ε the ledgers recorded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from p2pfed.consortium import free_ports
from p2pfed.errors import LocalError
from p2pfed.identity import Feature, Identity, Member, Roster, StudyProtocol
from p2pfed.studies.lung import LungSettings
from p2pfed.studies.lung_data import CENTER, COVARIATES, SCALE, Site

CONSORTIUM = "ncctg-lung"
KINDS = {"sex": "binary"}  # sex is coded 1/2; the scores are ordinal, used as numbers


def protocol_for(settings: LungSettings, max_patients: int) -> StudyProtocol:
    """The study protocol the admin signs (ε budget: what the rounds spend, rounded up)."""
    return StudyProtocol(
        CONSORTIUM,
        tuple(
            Feature(name, KINDS.get(name, "float"), c, s)
            for name, c, s in zip(COVARIATES, CENTER, SCALE, strict=True)
        ),
        "status",
        (0, 1),
        model="cox",
        seed=settings.seed,
        local_epochs=settings.local_steps,
        batch_size=max_patients,  # full batch: every step sees the site's whole risk sets
        learning_rate=settings.learning_rate,
        optimizer="sgd",
        rounds=settings.rounds,
        privacy_mode="distributed",
        epsilon=math.ceil(settings.epsilon() * 100 + 1) / 100,
        delta=settings.delta,
    )


def setup(folder: Path, raw_sites: list[Site], settings: LungSettings) -> None:
    """Keys, ports, the signed roster and protocol, and each site's file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    admin, members = Identity.generate(), []
    for k, (site, port) in enumerate(zip(raw_sites, free_ports(len(raw_sites)), strict=True)):
        me = Identity.generate()
        me.save(folder / f"site-{k}.key")
        address = f"/ip4/127.0.0.1/tcp/{port}"
        members.append(Member(site.name, me.peer_id, me.public_key, (address,)))
        np.savez(
            folder / f"site-{k}.npz",
            train_x=site.train.x, train_t=site.train.time, train_e=site.train.event,
            test_x=site.test.x, test_t=site.test.time, test_e=site.test.event,
        )  # fmt: skip
    expiry = datetime.now(UTC) + timedelta(days=1)
    Roster(CONSORTIUM, 1, expiry, tuple(members), (admin.public_key,)).signed_by(admin).save(
        folder / "roster.json"
    )
    most = max(len(s.train) for s in raw_sites)
    protocol_for(settings, most).signed_by(admin).save(folder / "protocol.json")
    dp = {"clip_norm": settings.clip_norm, "noise_multiplier": settings.noise_multiplier}
    (folder / "study.json").write_text(json.dumps(dp))


def run_sites(folder: Path, n_sites: int, rounds: int, timeout: float) -> AgreedHistory:
    """Run every site's process; what their reports agree on (ε is the ledgers')."""
    logs = [(folder / f"site-{k}.log").open("w") for k in range(n_sites)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "p2pfed.studies.lung_site", str(folder), str(k)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        for k, log in enumerate(logs)
    ]
    deadline = time.monotonic() + timeout
    results: list[dict[str, Any]] = []
    try:
        for k, proc in enumerate(procs):
            try:
                out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise LocalError(
                    f"the lung study's sites did not finish within {timeout:g} s"
                ) from None
            if proc.returncode != 0:
                err = (folder / f"site-{k}.log").read_text()
                last = (err.strip().splitlines() or ["no message"])[-1]
                raise LocalError(f"lung site {k} stopped with status {proc.returncode}: {last}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return agreed_history(results, rounds, len(COVARIATES))


@dataclass(frozen=True)
class AgreedHistory:
    """What the sites' reports agree on: β after each round and the rounds nobody committed."""

    betas: list[np.ndarray]
    epsilon: float
    missed: dict[int, list[str]]
    """Round → the reasons the sites gave, for every round no site committed."""
    contributors: list[int]
    """Per round, how many sites' updates its aggregate held (0 when nobody committed it)."""


def agreed_history(results: list[dict[str, Any]], rounds: int, n_features: int) -> AgreedHistory:
    """The consortium's β after each round, checked across the sites' reports.

    Refused unless every site that committed a round committed the same model in it. A round
    no site committed leaves the consortium's model where it was (every site rolled back to
    its base), so its β is the previous round's (0 before round 0) and its reasons are kept.
    """
    digests: dict[int, set[str]] = {}
    betas: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    reasons: dict[int, set[str]] = {}
    for result in results:
        for entry in result["history"]:
            r = int(entry["round"])
            if entry.get("committed", True):
                digests.setdefault(r, set()).add(entry["digest"])
                betas[r] = entry["beta"]
                counts[r] = int(entry.get("contributors", 0))
            else:
                reasons.setdefault(r, set()).add(str(entry.get("reason") or "no reason given"))
    split = sorted(r for r, seen in digests.items() if len(seen) > 1)
    if split:
        raise LocalError(f"the lung sites committed different models in round {split[0]}")
    if not betas:
        raise LocalError(f"no lung site committed any of the {rounds} rounds")
    history, beta = [], np.zeros(n_features)
    for r in range(rounds):
        beta = np.asarray(betas[r], dtype=np.float64) if r in betas else beta
        history.append(beta)
    missed = {
        r: sorted(reasons.get(r, {"no site reported it"})) for r in range(rounds) if r not in betas
    }
    epsilon = max(float(r["epsilon"] or 0.0) for r in results)
    return AgreedHistory(history, epsilon, missed, [counts.get(r, 0) for r in range(rounds)])


def run_study(
    settings: LungSettings, *, sim: bool, folder: Path, timeout: float = 300.0
) -> tuple[dict[str, Any], list[Site], np.ndarray]:
    """The whole study: (its figures, the sites, the federated β).

    On real daemons in ``folder`` by default; with ``sim``, ``simulate``'s identical rounds
    in this process.
    """
    from p2pfed.studies import lung
    from p2pfed.studies.lung_data import build_sites, pooled

    sites = build_sites(settings.min_events, settings.test_fraction, settings.seed)
    if sim:
        betas = lung.simulate(sites, settings)
        agreed = AgreedHistory(betas, settings.epsilon(), {}, [len(sites)] * len(betas))
    else:
        raw = build_sites(
            settings.min_events, settings.test_fraction, settings.seed, agreed_units=False
        )
        setup(folder, raw, settings)
        agreed = run_sites(folder, len(sites), settings.rounds, timeout)
    federated = lung.tail_average(agreed.betas)
    locals_ = [lung.local_only(site, settings) for site in sites]
    reference = lung.pooled_reference(pooled([site.train for site in sites]))
    figures = lung.summarise(
        sites, settings, federated, locals_, reference, "simulated" if sim else "daemons"
    )
    figures["epsilon"] = agreed.epsilon
    figures["rounds_committed"] = settings.rounds - len(agreed.missed)
    figures["rounds_missed"] = {str(r): why for r, why in agreed.missed.items()}
    figures["history"] = [beta.tolist() for beta in agreed.betas]
    figures["contributors"] = agreed.contributors
    return figures, sites, federated
