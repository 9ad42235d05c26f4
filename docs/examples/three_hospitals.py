"""Three hospitals, three processes, one model over libp2p with secure aggregation (docs/api.md).

    python docs/examples/three_hospitals.py setup DIR        # keys, ports, the signed roster
    python docs/examples/three_hospitals.py hospital DIR 0   # then one process per hospital
    python docs/examples/three_hospitals.py hospital DIR 1
    python docs/examples/three_hospitals.py hospital DIR 2

Each hospital prints one JSON line per round: the digest of its full model state
(parameters and BatchNorm statistics), which is the same at every hospital.
"""

import hashlib
import json
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
import trio
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import p2pfed
from p2pfed.identity import Identity, Member, Roster
from p2pfed.node import RoundReport
from p2pfed.training.torch_trainer import TorchTrainer, sgd

HOSPITALS, ROUNDS = 3, 3


def setup(folder: Path) -> None:
    """What the consortium's admin does once: member keys, addresses, the signed roster."""
    folder.mkdir(parents=True, exist_ok=True)
    admin, members = Identity.generate(), []
    for k in range(HOSPITALS):
        me = Identity.generate()
        me.save(folder / f"hospital-{k}.key")
        with socket.socket() as s:  # a free port for this hospital on this machine
            s.bind(("127.0.0.1", 0))
            address = f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}"
        members.append(Member(f"hospital-{k}", me.peer_id, me.public_key, (address,)))
    expiry = datetime.now(UTC) + timedelta(days=30)
    roster = Roster("three-hospitals", 1, expiry, tuple(members), (admin.public_key,))
    roster.signed_by(admin).save(folder / "roster.json")


def hospital_data(k: int, n: int, seed: int) -> TensorDataset:
    """Stands in for hospital k's own records: each site has its own case mix."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) * (1 + 0.5 * k) + k
    y = (x[:, 0] + x[:, 1] > 2).long()
    return TensorDataset(x, y)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """A custom loss: cross-entropy that down-weights the easy cases."""
    logp = torch.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor of the state, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode() + state[name].numpy().tobytes())
    return h.hexdigest()


async def hospital(folder: Path, k: int) -> None:
    """One hospital: its model, data and loss, joined to the others through ``build_peer``."""
    me, roster = Identity.load(folder / f"hospital-{k}.key"), Roster.load(folder / "roster.json")
    torch.manual_seed(0)  # every member starts from the same weights
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    shuffle = torch.Generator().manual_seed(k)
    rows = hospital_data(k, 256, seed=k)
    train = DataLoader(rows, batch_size=32, shuffle=True, generator=shuffle)
    test = DataLoader(hospital_data(k, 128, seed=100 + k), batch_size=128)
    trainer = TorchTrainer(model, focal_loss, train, test, sgd(0.1))
    member = roster.member(me.peer_id)
    assert member is not None, "this key is not in the roster"

    def report(r: RoundReport) -> None:
        line = {"hospital": k, "round": r.round, "committed": r.committed,
                "state_digest": digest(trainer.get_state()), "accuracy": r.test_accuracy}
        print(json.dumps(line), flush=True)

    async with p2pfed.build_peer(identity=me, roster=roster, listen=member.addresses[0],
                                 trainer=trainer, state_dir=folder / f"state-{k}") as peer:
        await peer.run(ROUNDS, on_report=report, startup_timeout=30.0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["setup"]:
        setup(Path(sys.argv[2]))
    else:
        trio.run(hospital, Path(sys.argv[2]), int(sys.argv[3]))
