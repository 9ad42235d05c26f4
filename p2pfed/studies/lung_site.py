"""One lung-study site as its own process on libp2p: ``python -m p2pfed.studies.lung_site DIR K``.

Theory of operation: what a participating hospital runs. It loads its key, the signed
roster and the signed study protocol from ``DIR`` and refuses a protocol the roster's admins
did not sign; reads its own patients (``site-K.npz``, covariates as recorded) and
standardises them with the protocol's agreed centres and scales; then joins the consortium
through ``build_peer`` (libp2p with Noise, secure aggregation, distributed DP noise
with the clip and σ of ``study.json``) and runs the protocol's rounds with a ``CoxTrainer``.
It prints one JSON line at the end: the consortium's β after every round it committed
(a site that starts late adopts the rounds it missed from the others and reports the rest),
the digest of each, and the ε its ledger recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import trio

from p2pfed.daemon.custom import Privacy, build_peer
from p2pfed.errors import ConfigError, P2PFedError
from p2pfed.identity import Identity, Roster, StudyProtocol, check_protocol
from p2pfed.node import RoundReport
from p2pfed.privacy import NoiseMode
from p2pfed.training.cox import CoxTrainer, Survival


def load_site(folder: Path, k: int, protocol: StudyProtocol) -> tuple[Survival, Survival]:
    """Site ``k``'s train and test patients in the protocol's agreed units."""
    if protocol.model != "cox":
        raise ConfigError(f"the study protocol's model is {protocol.model!r}, not 'cox'")
    center = np.array([f.center for f in protocol.features])
    scale = np.array([f.scale for f in protocol.features])
    with np.load(folder / f"site-{k}.npz") as f:
        parts = [
            Survival(((f[f"{p}_x"] - center) / scale).astype(np.float32), f[f"{p}_t"], f[f"{p}_e"])
            for p in ("train", "test")
        ]
    return parts[0], parts[1]


def _trainer(folder: Path, k: int, protocol: StudyProtocol) -> CoxTrainer:
    train, test = load_site(folder, k, protocol)
    return CoxTrainer(
        train, test, learning_rate=protocol.learning_rate, local_steps=protocol.local_epochs
    )


async def site(folder: Path, k: int) -> dict[str, Any]:
    """Run site ``k``'s part of the study; returns what it prints."""
    me = Identity.load(folder / f"site-{k}.key")
    roster = Roster.load(folder / "roster.json")
    protocol = StudyProtocol.load(folder / "protocol.json")
    check_protocol(protocol, roster)
    dp = json.loads((folder / "study.json").read_text())
    trainer = _trainer(folder, k, protocol)
    member = roster.member(me.peer_id)
    if member is None:
        raise ConfigError(f"key site-{k}.key is not a member of the roster")
    history: list[dict[str, Any]] = []

    def report(r: RoundReport) -> None:
        entry: dict[str, Any] = {"round": r.round, "committed": r.committed}
        if r.committed:  # the trainer holds the consortium's model after evaluating it
            beta = trainer.coefficients().tolist()
            entry |= {"beta": beta, "digest": r.model_digest, "contributors": r.contributors}
        else:
            entry["reason"] = r.reason
        history.append(entry)

    privacy = Privacy(
        clip_norm=dp["clip_norm"],
        noise_multiplier=dp["noise_multiplier"],
        epsilon_budget=protocol.epsilon,
        delta=protocol.delta,
        mode=NoiseMode.DISTRIBUTED,
    )
    async with build_peer(
        identity=me,
        roster=roster,
        listen=member.addresses[0],
        trainer=trainer,
        state_dir=folder / f"state-{k}",
        privacy=privacy,
        stage_timeout=30.0,
    ) as peer:
        await peer.run(protocol.rounds, on_report=report, startup_timeout=60.0)
        epsilon = peer.epsilon
    return {"site": k, "history": history, "epsilon": epsilon}


def main(argv: list[str]) -> int:
    """``DIR K``: run the site and print its JSON line; one sentence on a refusal."""
    try:
        result = trio.run(site, Path(argv[0]), int(argv[1]))
    except P2PFedError as exc:
        print(f"site {argv[1]}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
