"""``p2pfed study lung``: the in-process study's figures, and one run on real daemons.

The daemon run starts four site processes on 127.0.0.1 (libp2p, secure aggregation,
distributed DP) for 20 rounds: 4 min 40 s of wall time on 2 cores at load average 15-18
(eight sessions sharing the machine; not measured idle). The simulated study takes about 10 s of
CPU; the other tests a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p2pfed.errors import LocalError
from p2pfed.studies.lung_net import agreed_history

pytest.importorskip("lifelines")

KEYS = {"federated_c_index", "pooled_c_index", "local_c_index", "hazard_ratios", "epsilon"}


def _study(*args: str, timeout: float) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-m", "p2pfed", "study", "lung", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _check_figures(f: dict, rounds: int) -> None:  # type: ignore[type-arg]
    assert set(f) >= KEYS
    assert f["rounds_committed"] + len(f["rounds_missed"]) == rounds == len(f["history"])
    assert set(f["local_c_index"]) == set(f["sites"]) and len(f["sites"]) == 4
    assert set(f["hazard_ratios"]) == {"age", "sex", "ph.ecog", "ph.karno", "pat.karno", "wt.loss"}
    for hr in f["hazard_ratios"].values():
        assert hr["federated"] > 0 and hr["pooled_lifelines"] > 0
    assert f["epsilon"] > 0


@pytest.mark.timeout(600)  # two interpreters importing torch and lifelines under load
def test_simulated_study_meets_the_acceptance_figures_at_its_fixed_seed() -> None:
    figures = _study("--sim", "--rounds", "30", "--seed", "0", timeout=590)
    _check_figures(figures, 30)
    assert figures["mode"] == "simulated" and figures["rounds_committed"] == 30
    # The acceptance, at the study's fixed seed (other noise draws vary: see
    # docs/studies/lung.md): within 0.02 of pooled and above the median local-only site, and
    # ECOG, the strongest covariate of the pooled fit, raises the hazard in the federated model.
    assert abs(figures["pooled_c_index"] - figures["federated_c_index"]) < 0.02
    assert figures["federated_c_index"] > figures["median_local_c_index"]
    assert figures["hazard_ratios"]["ph.ecog"]["federated"] > 1.1


def _noise_residuals(folder: Path, history: list[list[float]], counts: list[int]) -> np.ndarray:
    """β_r − β_{r−1} − (the sites' mean clipped update from β_{r−1}), for the rounds that all
    four sites' updates made: with every site honest, this is the round's DP noise alone."""
    import torch

    from p2pfed.identity import StudyProtocol
    from p2pfed.studies.lung_site import _trainer

    protocol = StudyProtocol.load(folder / "protocol.json")
    clip = json.loads((folder / "study.json").read_text())["clip_norm"]
    trainers = [_trainer(folder, k, protocol) for k in range(4)]
    residuals, before = [], np.zeros(len(history[0]))
    for r, after in enumerate(np.asarray(history)):
        if counts[r] == 4 and (r == 0 or counts[r - 1] > 0):
            base = {"weight": torch.tensor(before, dtype=torch.float32).reshape(1, -1)}
            updates = []
            for trainer in trainers:
                update = trainer.fit(base, r).state["weight"].double().numpy().reshape(-1) - before
                updates.append(update * min(1.0, clip / float(np.linalg.norm(update))))
            residuals.append(after - before - np.mean(updates, axis=0))
        before = after
    return np.asarray(residuals)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_study_on_real_daemons_adds_exactly_the_declared_noise(tmp_path: Path) -> None:
    """The daemons' rounds are the study's: every site's clipped update, averaged, plus DP noise
    of the declared scale, no less (privacy) and no more (utility).

    The federated C-index of one unseeded noise draw is not asserted: over 24 draws in the
    simulator 20 rounds ended between 0.58 and 0.70 (pooled 0.667), and CI saw 0.53 once.
    """
    from p2pfed.studies.lung import LungSettings, guaranteed_share

    folder = tmp_path / "sites"
    figures = _study("--rounds", "20", "--dir", str(folder), "--timeout", "850", timeout=890)
    _check_figures(figures, 20)
    assert figures["mode"] == "daemons"
    assert all(why for why in figures["rounds_missed"].values())  # a missed round says why
    # ε is what the four ledgers recorded, not a figure computed beside them
    assert len(list(folder.glob("state-*/privacy-ledger"))) == 4
    residuals = _noise_residuals(folder, figures["history"], figures["contributors"])
    assert residuals.size >= 60, figures["rounds_missed"]
    s = LungSettings()
    expected = s.noise_multiplier * s.clip_norm / np.sqrt(guaranteed_share(4) * 4)
    ratio = float(np.sqrt(np.mean(residuals**2))) / expected
    # chi-square with residuals.size degrees of freedom: 5 standard errors either side
    margin = 5 / np.sqrt(2 * residuals.size)
    assert 1 - margin < ratio < 1 + margin, (ratio, residuals.size)


def _result(rounds: dict[int, str], epsilon: float = 1.0, missed: tuple[int, ...] = ()) -> dict:  # type: ignore[type-arg]
    history = [
        {"round": r, "committed": True, "beta": [float(r)], "digest": d, "contributors": 2}
        for r, d in rounds.items()
    ]
    history += [{"round": r, "committed": False, "reason": "cohort too small"} for r in missed]
    return {"history": history, "epsilon": epsilon}


def test_sites_that_committed_different_models_are_refused() -> None:
    good = _result({0: "a", 1: "b"})
    with pytest.raises(LocalError, match="different models in round 1"):
        agreed_history([good, _result({0: "a", 1: "X"})], 2, 1)


def test_a_round_nobody_committed_keeps_the_model_and_says_why() -> None:
    agreed = agreed_history([_result({1: "b", 3: "d"}, missed=(0, 2))], 5, 1)
    assert [float(b[0]) for b in agreed.betas] == [0.0, 1.0, 1.0, 3.0, 3.0]
    assert agreed.missed == {0: ["cohort too small"], 2: ["cohort too small"],
                             4: ["no site reported it"]}  # fmt: skip
    assert agreed.contributors == [0, 2, 0, 2, 0]


def test_sites_that_committed_nothing_are_refused() -> None:
    with pytest.raises(LocalError, match="no lung site committed any of the 2 rounds"):
        agreed_history([_result({}, missed=(0, 1))], 2, 1)


def test_a_late_site_that_adopted_early_rounds_still_agrees() -> None:
    late = _result({1: "b"}, epsilon=2.0)
    agreed = agreed_history([_result({0: "a", 1: "b"}), late], 2, 1)
    assert [float(b[0]) for b in agreed.betas] == [0.0, 1.0]
    assert agreed.epsilon == 2.0 and agreed.missed == {}


def _sites_folder(folder: Path) -> list:  # type: ignore[type-arg]
    from p2pfed.studies.lung import LungSettings
    from p2pfed.studies.lung_data import build_sites
    from p2pfed.studies.lung_net import setup

    setup(folder, build_sites(30, 0.3, 0, agreed_units=False), LungSettings(rounds=2))
    return build_sites(30, 0.3, 0)


def test_a_site_standardises_its_own_file_with_the_protocols_agreed_units(tmp_path: Path) -> None:
    from p2pfed.identity import StudyProtocol
    from p2pfed.studies.lung_site import load_site

    agreed = _sites_folder(tmp_path)
    protocol = StudyProtocol.load(tmp_path / "protocol.json")
    for k, expected in enumerate(agreed):
        train, test = load_site(tmp_path, k, protocol)
        np.testing.assert_allclose(train.x, expected.train.x, atol=1e-5)
        np.testing.assert_array_equal(test.time, expected.test.time)


@pytest.mark.timeout(120)  # accepted, the site would wait for its peers instead
def test_a_site_refuses_a_protocol_its_admins_did_not_sign(tmp_path: Path) -> None:
    import trio

    from p2pfed.errors import P2PFedError
    from p2pfed.identity import Identity, StudyProtocol
    from p2pfed.studies.lung_site import site

    _sites_folder(tmp_path)
    protocol = StudyProtocol.load(tmp_path / "protocol.json")
    forged = dataclasses.replace(protocol, epsilon=1000.0, signatures=())
    forged.signed_by(Identity.generate()).save(tmp_path / "protocol.json")
    with pytest.raises(P2PFedError, match="study protocol"):
        trio.run(site, tmp_path, 0)
    assert not (tmp_path / "state-0").exists()  # refused before it joined anything
