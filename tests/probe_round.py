"""Four members' rounds in one process on the memory transport: their own CPU, no libp2p.

``python -m tests.probe_round [--params 10e6] [--rounds 3]``: four ``Peer``s with the
daemon's ``LocalTrainer`` on the sized MLP (2 steps at batch 4), the secure ring, privacy
off, run ``--rounds`` rounds on ``MemoryNetwork``. Prints JSON: the process's CPU seconds
(all threads, ``process_time``) per round after the first, for all four members together,
and each stage's wall seconds summed over the members. Without the transport's Noise and
Yamux this isolates what the members' own code costs (docs/benchmarks.md, *Where a 10 M
round's time goes*).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trio

from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.daemon.memory import return_freed_memory
from p2pfed.identity import Identity
from p2pfed.node import Peer, RoundReport, SecureRingAggregator
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.training import LocalTrainer, TrainingConfig, load_builtin, sized
from p2pfed.training.data import dirichlet_split
from p2pfed.transport import MemoryNetwork

MEMBERS = 4


def main() -> None:
    """Run the rounds; print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=10e6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    return_freed_memory()  # as `p2pfed run` does
    torch.set_num_threads(1)
    ids = [Identity.generate() for _ in range(MEMBERS)]
    keys = {i.peer_id: i.public_key for i in ids}
    data = load_builtin("breast_cancer")
    parts = dirichlet_split(data.y, MEMBERS, 1.0, np.random.default_rng(1), min_size=60)
    net, folder = MemoryNetwork(), Path(tempfile.mkdtemp(prefix="p2pfed-probe-"))
    ends: dict[int, list[float]] = {}
    stages: dict[str, float] = {}

    def report(r: RoundReport) -> None:
        if not r.committed:
            raise SystemExit(f"round {r.round} missed: {r.reason}")
        ends.setdefault(r.round, []).append(time.process_time())
        for name, seconds in r.stages_s if r.round > 0 else ():
            stages[name] = stages.get(name, 0.0) + seconds

    async def member(k: int) -> None:
        me = ids[k]
        async with net.open(me.peer_id) as transport:
            signer = Ed25519CohortSigner(me.seed, keys)
            secure = SecureRingRound(transport, "probe", 1, keys, me, signer, stage_timeout=120.0)
            secure.pace(120.0)  # the agreement's windows stretched, as PacedAggregator does
            aggregator = SecureRingAggregator(
                secure, FixedPoint(), MEMBERS, 3, np.random.default_rng(k)
            )
            torch.manual_seed(0)  # the same initial model at every member
            trainer = LocalTrainer(
                sized.mlp(data.n_features, int(args.params)),
                TrainingConfig(local_steps=2, batch_size=4, learning_rate=1e-4),
                torch.Generator().manual_seed(k),
                train=data.subset(parts[k], f"h{k}"),
                test=data.subset(np.arange(60), "test"),
            )
            peer = Peer(
                transport=transport,
                consortium="probe",
                members=list(keys),
                trainer=trainer,
                aggregator=aggregator,
                releaser=None,
                state_dir=folder / f"member-{k}",
                signer=signer,
                roster_version=1,
                certify_timeout=60.0,
            )
            await peer.run(args.rounds, on_report=report, startup_timeout=60.0)

    async def everyone() -> None:
        async with trio.open_nursery() as nursery:
            for k in range(MEMBERS):
                nursery.start_soon(member, k)

    trio.run(everyone)
    later = args.rounds - 1
    print(
        json.dumps(
            {
                "params": int(args.params),
                "members": MEMBERS,
                "cpu_s_per_round": round((max(ends[later]) - max(ends[0])) / max(1, later), 2),
                "stage_wall_s_summed": {k: round(v / max(1, later), 2) for k, v in stages.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
