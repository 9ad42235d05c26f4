"""A custom peer: own torch model and data loader on p2pfed's secure aggregation (docs/api.md)."""

import numpy as np
import torch
import trio
from torch import nn

from p2pfed.collectives.secure import SecureRingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.identity import Identity
from p2pfed.node import Peer, SecureRingAggregator
from p2pfed.secagg.fixedpoint import FixedPoint
from p2pfed.training import Dataset, LocalTrainer, TrainingConfig
from p2pfed.transport import MemoryNetwork


def my_loader(seed: int) -> Dataset:
    """Stands in for the hospital's own data loader."""
    x = np.random.default_rng(seed).normal(size=(200, 5)).astype(np.float32)
    return Dataset(x, (x[:, 0] + x[:, 1] > 0).astype(np.int64), ("age", "bp", "hr", "bmi", "crp"))


async def hospital(net: MemoryNetwork, me: Identity, keys: dict, state: str, out: list) -> None:
    """One member: its model, data, secure aggregator and three rounds."""
    async with net.open(me.peer_id) as transport:  # a Libp2pTransport in production
        torch.manual_seed(0)  # every member starts from the same weights
        model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
        trainer = LocalTrainer(model, TrainingConfig(learning_rate=0.1), torch.Generator(),
                               train=my_loader(len(out)), test=my_loader(99))
        signer = Ed25519CohortSigner(me.seed, keys)
        secure = SecureRingRound(transport, "my-consortium", 1, keys, me, signer)
        rng = np.random.default_rng()
        aggregator = SecureRingAggregator(secure, FixedPoint(), len(keys), 3, rng)
        peer = Peer(transport=transport, consortium="my-consortium", members=list(keys),
                    trainer=trainer,
                    aggregator=aggregator, releaser=None, state_dir=f"{state}/{me.peer_id}",
                    signer=signer, roster_version=1)
        out.append(await peer.run(rounds=3, startup_timeout=5.0))


async def main(state: str) -> list:
    """Three hospitals on an in-memory network; returns each one's round reports."""
    ids = [Identity.generate() for _ in range(3)]
    keys = {i.peer_id: i.public_key for i in ids}
    net, reports = MemoryNetwork(), []
    async with trio.open_nursery() as nursery:
        for me in ids:
            nursery.start_soon(hospital, net, me, keys, state, reports)
    return reports  # one list of RoundReports per hospital
