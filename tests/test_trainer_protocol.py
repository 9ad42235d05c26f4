"""The trainer protocol: full states (buffers too) shared by policy, DP-SGD limits, threads.

Three peers on the in-memory network run ``TorchTrainer``s over a model with BatchNorm, each
on different data, through the plain ring: the attacks are the failures a peer would hide
(statistics silently not averaged, a local tensor averaged anyway, the trio loop frozen by
training).
"""

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import trio
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from p2pfed.collectives.round import RingRound
from p2pfed.collectives.signing import Ed25519CohortSigner
from p2pfed.errors import ConfigError, DataError
from p2pfed.identity import Identity
from p2pfed.node import Peer, RingAggregator
from p2pfed.training import DPSGD
from p2pfed.training.state import FitResult, State, StatePolicy, flatten, layout_of, unflatten
from p2pfed.training.torch_trainer import TorchTrainer, sgd
from p2pfed.transport import MemoryNetwork


def bn_model() -> nn.Module:
    torch.manual_seed(0)  # every member starts from the same weights
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def loader(site: int, n: int = 64) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Site ``site``'s data: shifted and scaled differently, so BatchNorm statistics differ."""
    g = torch.Generator().manual_seed(site)
    x = torch.randn(n, 4, generator=g) * (1 + site) + 3 * site
    y = (x[:, 0] > 3 * site).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def trainer(site: int, policy: StatePolicy | None = None) -> TorchTrainer:
    return TorchTrainer(
        bn_model(), nn.CrossEntropyLoss(), loader(site), loader(site + 10), sgd(0.05), policy=policy
    )


class Watched:
    """A trainer that records whether the trio loop kept running while it trained."""

    def __init__(self, inner: TorchTrainer, heartbeat: threading.Event) -> None:
        self.inner, self.heartbeat = inner, heartbeat
        self.loop_ran_during_fit: list[bool] = []
        self.policy = inner.policy

    def get_state(self) -> State:
        return self.inner.get_state()

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.inner.set_state(state)

    def fit(self, state: Mapping[str, torch.Tensor], round: int) -> FitResult:
        self.heartbeat.clear()
        # On the trio thread nothing else runs until fit returns: no heartbeat comes.
        self.loop_ran_during_fit.append(self.heartbeat.wait(timeout=3.0))
        return self.inner.fit(state, round)

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return self.inner.evaluate(state)


async def run_three(tmp: Path, trainers: list, rounds: int = 2) -> list[Peer]:  # type: ignore[type-arg]
    ids = [Identity.generate() for _ in trainers]
    keys = {i.peer_id: i.public_key for i in ids}
    net, peers, finished = MemoryNetwork(), [], []
    everyone_done = trio.Event()

    async def one(k: int) -> None:
        me = ids[k]
        async with net.open(me.peer_id) as transport:
            signer = Ed25519CohortSigner(me.seed, keys)
            ring = RingRound(transport, "t", 1, sorted(keys), signer)
            peer = Peer(
                transport=transport,
                consortium="t",
                members=list(keys),
                trainer=trainers[k],
                aggregator=RingAggregator(ring),
                releaser=None,
                state_dir=tmp / f"s{k}",
                signer=signer,
                roster_version=1,
            )
            peers.append(peer)
            reports = await peer.run(rounds, startup_timeout=5.0)
            assert all(r.committed and r.contributors == 3 for r in reports)
            # Stay reachable until all are done: a late peer's final check probes the others.
            finished.append(k)
            if len(finished) == len(trainers):
                everyone_done.set()
            await everyone_done.wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for k in range(len(trainers)):
                nursery.start_soon(one, k)
    return peers


def states(trainers: list[TorchTrainer]) -> list[State]:
    """What each module holds (not what the trainer says it holds)."""
    return [dict(t.module.state_dict()) for t in trainers]


def test_batchnorm_statistics_are_averaged_like_parameters(tmp_path: Path) -> None:
    trainers = [trainer(k) for k in range(3)]
    trio.run(run_three, tmp_path, trainers)
    first, *rest = states(trainers)
    for other in rest:  # every tensor, buffers and the step counter included
        assert first.keys() == other.keys()
        for name in first:
            assert torch.equal(first[name], other[name]), name
    # The statistics moved from their initial values: they were trained, then averaged.
    assert not torch.equal(first["1.running_mean"], torch.zeros(8))


def test_local_policy_keeps_tensors_on_the_node(tmp_path: Path) -> None:
    policy = StatePolicy(local=("*.running_*", "3."))  # FedBN statistics and a personal head
    trainers = [trainer(k, policy) for k in range(3)]
    peers = trio.run(run_three, tmp_path, trainers)
    assert peers[0].layout.names == ("0.weight", "0.bias", "1.weight", "1.bias")
    first, *rest = states(trainers)
    for other in rest:
        assert torch.equal(first["0.weight"], other["0.weight"])
        for name in ("1.running_mean", "1.running_var", "3.weight"):
            assert not torch.equal(first[name], other[name]), name  # each site's own


def test_training_runs_off_the_trio_thread(tmp_path: Path) -> None:
    heartbeat = threading.Event()
    watched = [Watched(trainer(k), heartbeat) for k in range(3)]

    async def main() -> None:
        async def beat() -> None:
            while True:
                heartbeat.set()
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(beat)
            await run_three(tmp_path, watched, rounds=1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [w.loop_ran_during_fit for w in watched] == [[True]] * 3


def test_batchnorm_is_refused_under_dp_sgd_with_one_sentence() -> None:
    dp = DPSGD(sample_rate=0.25, clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match=r"BatchNorm.*GroupNorm") as info:
        TorchTrainer(bn_model(), nn.CrossEntropyLoss(), loader(0), dpsgd=dp)
    assert "\n" not in str(info.value)


def test_dp_sgd_trains_any_module_from_a_data_loader() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.ReLU(), nn.Linear(8, 2))
    dp = DPSGD(sample_rate=0.25, clip_norm=1.0, noise_multiplier=1.0)
    t = TorchTrainer(
        model,
        nn.CrossEntropyLoss(),
        loader(0),
        generator=torch.Generator().manual_seed(1),
        noise_generator=torch.Generator().manual_seed(2),
        dpsgd=dp,
    )
    before = t.get_state()
    result = t.fit(before, 0)
    assert (result.sample_rate, result.steps, result.n_examples) == (0.25, 4, 64)
    assert not torch.equal(before["0.weight"], result.state["0.weight"])


def test_flatten_round_trips_and_refuses_a_wrong_vector() -> None:
    t = trainer(0)
    layout = layout_of(t.get_state(), t.policy)
    assert "1.num_batches_tracked" not in layout.names  # an integer counter: never averaged
    vector = flatten(layout, t.get_state())
    assert np.array_equal(flatten(layout, unflatten(layout, vector)), vector)
    with pytest.raises(DataError, match="shape"):
        unflatten(layout, vector[:-1])
    with pytest.raises(DataError, match=r"has no tensor named 'head\.w'"):
        t.set_state({"head.w": torch.zeros(1)})


def test_build_peer_refuses_a_key_outside_the_roster_and_unsafe_privacy(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    import p2pfed
    from p2pfed.identity import Member, Roster
    from p2pfed.privacy import NoiseMode

    admin, member, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    roster = Roster(
        "c",
        1,
        datetime.now(UTC) + timedelta(days=1),
        (Member("a", member.peer_id, member.public_key),),
        (admin.public_key,),
    ).signed_by(admin)

    async def build(identity: Identity, **settings: object) -> None:
        async with p2pfed.build_peer(
            identity=identity,
            roster=roster,
            listen="/ip4/127.0.0.1/tcp/0",
            trainer=trainer(0),
            state_dir=tmp_path / identity.peer_id,
            **settings,  # type: ignore[arg-type]
        ):
            raise AssertionError("the peer should not have been built")

    with pytest.raises(ConfigError, match=r"is not a member of the roster"):
        trio.run(build, stranger)
    unmasked = p2pfed.Privacy(1.0, 1.0, 10.0, mode=NoiseMode.DISTRIBUTED)
    with pytest.raises(ConfigError, match=r"distributed noise needs secure aggregation"):
        trio.run(lambda: build(member, secagg=False, privacy=unmasked))
    for bad in (1, 0, True, 2.5):  # as the daemon's [rounds] min_peers: an integer ≥ 2
        with pytest.raises(ConfigError, match=r"min_cohort must be an integer ≥ 2"):
            trio.run(lambda: build(member, min_cohort=bad))  # noqa: B023


def test_build_peer_takes_min_cohort_into_the_round_and_the_certificates(tmp_path: Path) -> None:
    """No sum of fewer than ``min_cohort`` members commits, nor is certified by fewer."""
    from datetime import UTC, datetime, timedelta

    import p2pfed
    from p2pfed.identity import Member, Roster
    from p2pfed.node import RingAggregator, SecureRingAggregator

    admin = Identity.generate()
    ids = [Identity.generate() for _ in range(4)]
    members = tuple(Member(f"m{k}", i.peer_id, i.public_key) for k, i in enumerate(ids))
    roster = Roster(
        "c", 1, datetime.now(UTC) + timedelta(days=1), members, (admin.public_key,)
    ).signed_by(admin)
    seen: dict[tuple[bool, int | None], tuple[int, int]] = {}

    async def build(secagg: bool, min_cohort: int | None) -> None:
        extra = {} if min_cohort is None else {"min_cohort": min_cohort}
        async with p2pfed.build_peer(
            identity=ids[0],
            roster=roster,
            listen="/ip4/127.0.0.1/tcp/0",
            trainer=trainer(0),
            state_dir=tmp_path / f"{secagg}-{min_cohort}",
            secagg=secagg,
            **extra,  # type: ignore[arg-type]
        ) as peer:
            agg = peer.aggregator
            if isinstance(agg, RingAggregator):
                fewest = agg.ring_round.min_cohort
            else:
                assert isinstance(agg, SecureRingAggregator)
                fewest = agg.guaranteed_contributors
            seen[(secagg, min_cohort)] = (fewest, peer.policy.floor)

    for secagg in (False, True):
        for min_cohort in (None, 4):
            trio.run(build, secagg, min_cohort)
    assert seen[(False, None)] == (2, 2)  # the daemon's default
    assert seen[(False, 4)] == (4, 4)
    assert seen[(True, 4)] == (4, 4)
    assert seen[(True, None)][1] == 2 and seen[(True, None)][0] >= 2  # consistency quorum


def test_checkpoints_restore_the_full_state_and_refuse_a_damaged_file(tmp_path: Path) -> None:
    from p2pfed.errors import IntegrityError
    from p2pfed.training.state import load_checkpoint, save_checkpoint

    heartbeat = threading.Event()
    heartbeat.set()
    for k, make in enumerate((trainer, lambda s: Watched(trainer(s), heartbeat))):  # own, generic
        made, fresh = make(1), make(1)
        made.fit(made.get_state(), 0)  # moves parameters and BatchNorm statistics
        path = tmp_path / f"checkpoint-{k}"
        save_checkpoint(made, path, 7, {"note": "x"})
        assert load_checkpoint(fresh, path) == (7, {"note": "x"})
        for name, tensor in made.get_state().items():
            assert torch.equal(fresh.get_state()[name], tensor), name
        data = bytearray(path.read_bytes())
        data[-5] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(IntegrityError):
            load_checkpoint(fresh, path)
