"""The equivocation attack over real libp2p hosts on 127.0.0.1 (Noise, roster-gated).

Five peers run the real secure-aggregation driver; their key adverts, sealed shares,
receipts, commitments, survivor signatures and reveals travel as real streams. Only the
summation step is the attacker's: it collects every masked vector and tells {a, v, b} the
sum was over {a, v, b} and {c, d} that it was over {a, c, d} (issue 12's n = 5, t = 3 case).
"""

from __future__ import annotations

import numpy as np
import pytest
import trio
from transport_harness import libp2p_group

from p2pfed.collectives.round import ControlService
from p2pfed.collectives.secure import SECAGG_PROTOCOL, drive_secagg
from p2pfed.secagg import SecAggConfig, SecAggPeer, Stage
from p2pfed.secagg.harness import make_identities, seeded_random_bytes
from p2pfed.secagg.messages import MessageKind
from p2pfed.secagg.primitives import UIntVector
from p2pfed.secagg.summation import DirectMaskedSum

pytestmark = [pytest.mark.network, pytest.mark.slow]

D = 64


async def test_an_equivocated_survivor_set_over_libp2p_reveals_nothing() -> None:
    with trio.fail_after(60):
        async with libp2p_group(5, "equivocation") as group:
            transports = {t.local_peer: t for t in group.transports}
            a, b, c, d, v = sorted(transports)
            split = {a: frozenset({a, v, b}), v: frozenset({a, v, b}), b: frozenset({a, v, b})}
            split |= {c: frozenset({a, c, d}), d: frozenset({a, c, d})}
            signers, identities = make_identities(sorted(transports))
            config = SecAggConfig("equivocation", 1, D, threshold=3, min_survivors=3)
            rng = np.random.default_rng(5)
            inputs = {p: rng.integers(0, 2**20, D, dtype=np.uint32) for p in transports}
            peers = {
                p: SecAggPeer(
                    config, p, signers[p], identities, random_bytes=seeded_random_bytes(2, p)
                )
                for p in transports
            }
            masked: dict[str, UIntVector] = {}
            all_in = trio.Event()

            def lying_summation(me: str):
                async def summation(vector: UIntVector) -> tuple[UIntVector, frozenset[str]]:
                    masked[me] = vector.copy()
                    if len(masked) == len(peers):
                        all_in.set()
                    await all_in.wait()
                    told = split[me]
                    total, _ = DirectMaskedSum().sum({p: masked[p] for p in told}, 32)
                    return total, told

                return summation

            async with trio.open_nursery() as nursery:
                for p, transport in transports.items():
                    channel = ControlService(
                        transport, "equivocation", timeout=5.0, protocol=SECAGG_PROTOCOL
                    )
                    nursery.start_soon(
                        drive_secagg,
                        peers[p],
                        inputs[p],
                        channel,
                        channel.open_round(1),
                        1,
                        3.0,
                        lying_summation(p),
                    )
    assert len(masked) == 5  # every vector reached the liar: the attack had its chance
    for p in (b, c, d, v):
        assert peers[p].stage is Stage.ABORTED, p
        assert "nothing was revealed" in (peers[p].abort_reason or "")
    # Not one share of anyone's secret reached the attacker.
    assert not peers[a]._inbox[MessageKind.REVEAL]


def test_an_equivocated_survivor_set_between_real_processes_reveals_nothing() -> None:
    """The same attack with five peer processes: each its own libp2p host, sockets, keys."""
    from p2pfed.testing.process import ProcessGroup

    with ProcessGroup(5, tag="equivocation") as group:
        order = sorted(range(5), key=lambda i: group.peers[i])
        a, b, c, d, v = order  # attacker a (lowest ID), victim v
        split = {str(i): [a, v, b] for i in (a, v, b)} | {str(i): [a, c, d] for i in (c, d)}
        task = {
            "kind": "equivocate",
            "round": 1,
            "words": D,
            "seed": 9,
            "attacker": a,
            "split": split,
            "threshold": 3,
            "min_survivors": 3,
        }
        results = group.run(task, timeout=90)
    for i in (b, c, d, v):
        r = results[i]
        assert r is not None and r["stage"] == "aborted", (i, r)
        assert r["quorum"] == 4 and "nothing was revealed" in r["abort_reason"]
    attacker = results[a]
    assert attacker is not None and attacker["reveals_received"] == 0
