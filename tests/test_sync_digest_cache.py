"""Model sync hashes each model version once, and never serves a stale digest."""

from __future__ import annotations

import numpy as np
import trio

from p2pfed.node.sync import DigestCache, ModelSync, weights_digest
from p2pfed.transport import MemoryNetwork

SIZE = 1000


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, weights: np.ndarray) -> bytes:
        self.calls += 1
        return weights_digest(weights)


def test_one_hash_per_version_and_a_new_one_for_a_new_array_or_round() -> None:
    count = Counting()
    cache = DigestCache(count)
    w = np.ones(SIZE, np.float32)
    assert all(cache(3, w) == weights_digest(w) for _ in range(10))
    assert count.calls == 1
    # A model adopted from another member within the same round: a new array, a new digest.
    adopted = np.full(SIZE, 2.0, np.float32)
    assert cache(3, adopted) == weights_digest(adopted) and count.calls == 2
    assert cache(4, adopted) == weights_digest(adopted) and count.calls == 3


async def test_members_probing_every_round_see_the_current_digest_hashed_once_per_round() -> None:
    net = MemoryNetwork()
    state = {"round": 0, "weights": np.zeros(SIZE, np.float32)}
    with trio.fail_after(20):
        async with net.open("server") as server, net.open("prober") as prober:
            served = ModelSync(
                server, "c", lambda: (state["round"], state["weights"], None), SIZE
            )
            count = Counting()
            served.digest = DigestCache(count)
            asking = ModelSync(prober, "c", lambda: (-1, np.zeros(SIZE, np.float32), None), SIZE)
            for round_ in range(3):
                # The model changes: a new array for a new round, as the peer replaces it.
                state["round"] = round_
                state["weights"] = np.full(SIZE, float(round_), np.float32)
                for _ in range(5):
                    status = await asking.status_of("server")
                    assert status.round == round_
                    assert status.digest == weights_digest(state["weights"])  # never stale
    assert count.calls == 3  # once per version, not once per probe
