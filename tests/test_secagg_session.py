"""The sans-I/O session: bytes and a clock in, bytes out; hold-back, deadlines, sum wait."""

from collections import deque
from collections.abc import Callable

import numpy as np
import pytest

import p2pfed.secagg.protocol as protocol
from p2pfed.errors import ConfigError, ReasonCode
from p2pfed.secagg.harness import make_identities, seeded_random_bytes
from p2pfed.secagg.messages import AdvertiseKeys, InputCommit, decode, encode
from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.protocol import SecAggPeer
from p2pfed.secagg.session import (
    Finished,
    NeedSum,
    Refused,
    SecAggSession,
    Send,
    Wait,
)
from p2pfed.secagg.state import Stage
from p2pfed.secagg.summation import DirectMaskedSum

D = 16
NAMES = ["a", "b", "c"]
TIMEOUT = 5.0
Hold = Callable[[str, str, bytes], bool]


def sessions(round_: int = 3, max_held: int = 4096) -> dict[str, SecAggSession]:
    signers, ids = make_identities(NAMES)
    config = SecAggConfig("session", round_, D)
    return {
        n: SecAggSession(
            SecAggPeer(config, n, signers[n], ids, random_bytes=seeded_random_bytes(round_, n)),
            TIMEOUT,
            max_held,
        )
        for n in NAMES
    }


class Network:
    """FIFO delivery between sessions; ``hold`` keeps chosen messages back for later."""

    def __init__(self, peers: dict[str, SecAggSession]) -> None:
        self.peers = peers
        self.delivered = 0
        self.queue: deque[tuple[str, str, bytes]] = deque()
        self.held: list[tuple[str, str, bytes]] = []
        self.refused: list[Refused] = []

    def post(self, sender: str, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.queue.append((sender, action.to, action.data))
            else:
                self.refused.append(action)

    def run(self, now: float, hold: Hold = lambda s, r, d: False) -> None:
        while self.queue:
            sender, to, data = self.queue.popleft()
            if hold(sender, to, data):
                self.held.append((sender, to, data))
            else:
                self.delivered += 1
                self.post(to, self.peers[to].receive(sender, data, now))

    def release(self, now: float) -> None:
        self.queue.extend(self.held)
        self.held.clear()
        self.run(now)


def start(net: Network, now: float = 0.0) -> None:
    for n, session in net.peers.items():
        net.post(n, session.start(np.full(D, NAMES.index(n) + 1, np.uint32), now))


def is_kind(kind: type, sender: str | None = None, to: str | None = None) -> Hold:
    def hold(s: str, r: str, data: bytes) -> bool:
        return isinstance(decode(data), kind) and sender in (None, s) and to in (None, r)

    return hold


def test_shares_that_overtake_their_advertisement_are_held_not_refused() -> None:
    net = Network(sessions())
    start(net)
    net.run(0.0, hold=is_kind(AdvertiseKeys, sender="b", to="a"))
    a = net.peers["a"]
    assert a.peer.stage is Stage.ADVERTISE and len(a._held) == 1  # b's shares wait for b's keys
    net.release(0.0)
    assert len(a._held) == 0 and not a.peer.rejections and not net.refused
    assert all(isinstance(s.next(), NeedSum) for s in net.peers.values())


def test_bad_bytes_and_other_rounds_are_refused_not_held() -> None:
    a = sessions()["a"]
    a.start(np.zeros(D, np.uint32), 0.0)
    (garbage,) = a.receive("b", b"\x00garbage", 0.0)
    assert isinstance(garbage, Refused) and garbage.error.reason is ReasonCode.MALFORMED
    other = sessions(round_=4)["b"].start(np.zeros(D, np.uint32), 0.0)
    (stale,) = a.receive("c", next(x for x in other if x.to == "a").data, 0.0)
    assert isinstance(stale, Refused) and stale.error.reason is ReasonCode.WRONG_ROUND
    assert len(a._held) == 0


@pytest.mark.parametrize(("bound", "kept"), [(4096, 2), (1, 1)])
def test_the_hold_back_buffer_is_bounded(bound: int, kept: int) -> None:
    net = Network(sessions(max_held=bound))
    start(net)
    # Everything reaches a except the keys of b and c, so both their shares are early.
    net.run(0.0, hold=is_kind(AdvertiseKeys, to="a"))
    assert len(net.peers["a"]._held) == kept


def test_each_message_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting(data: bytes):
        calls.append(data)
        return decode(data)

    monkeypatch.setattr(protocol, "decode", counting)
    net = Network(sessions())
    start(net)
    net.run(0.0, hold=is_kind(AdvertiseKeys, sender="b", to="a"))  # some are held back
    net.release(0.0)
    assert not net.peers["a"]._held
    assert len(calls) == net.delivered > 0


def test_stage_deadlines_come_from_the_clock() -> None:
    a = sessions()["a"]
    a.start(np.zeros(D, np.uint32), 10.0)
    assert a.next() == Wait(10.0 + TIMEOUT)
    assert a.tick(10.0 + TIMEOUT - 0.01) == [] and a.peer.stage is Stage.ADVERTISE
    a.tick(10.0 + TIMEOUT)  # alone: too few share holders advertised keys
    assert a.next() == Finished(Stage.ABORTED) and a.peer.abort_code is ReasonCode.DROPPED


def to_the_sum(hold: Hold = lambda s, r, d: False) -> tuple[Network, dict[str, np.ndarray]]:
    net = Network(sessions())
    start(net)
    net.run(0.0, hold)
    needs = {n: s.next() for n, s in net.peers.items()}
    assert all(isinstance(x, NeedSum) for x in needs.values())
    return net, {n: x.vector.copy() for n, x in needs.items() if isinstance(x, NeedSum)}


def test_a_whole_round_through_sessions_unmasks_the_plain_sum() -> None:
    net, vectors = to_the_sum()
    total, contributors = DirectMaskedSum().sum(vectors, 32)
    for n, session in net.peers.items():
        net.post(n, session.summed((total.copy(), contributors), 1.0))
    net.run(1.0)
    for session in net.peers.values():
        assert session.next() == Finished(Stage.DONE)
        assert (session.peer.result() == 1 + 2 + 3).all()


def test_the_sum_waits_for_every_contributors_commitment() -> None:
    net, vectors = to_the_sum(hold=is_kind(InputCommit, sender="c", to="a"))
    a = net.peers["a"]
    total, contributors = DirectMaskedSum().sum(vectors, 32)
    assert a.summed((total, contributors), 2.0) == []  # c's mask set is not in yet
    assert a.next() == Wait(2.0 + TIMEOUT) and a.peer.stage is Stage.MASKED_INPUT
    net.release(3.0)
    assert a.peer.stage is Stage.CONSISTENCY  # the commitment came: a signed the set


def test_a_sum_whose_commitment_never_comes_is_checked_at_the_deadline() -> None:
    net, vectors = to_the_sum(hold=is_kind(InputCommit, sender="c", to="a"))
    a = net.peers["a"]
    a.summed(DirectMaskedSum().sum(vectors, 32), 2.0)
    a.tick(2.0 + TIMEOUT)
    assert a.next() == Finished(Stage.ABORTED)
    assert a.peer.abort_reason == "no input commitment from contributors ['c']"


def test_a_failed_sum_ends_the_round() -> None:
    net, _ = to_the_sum()
    a = net.peers["a"]
    assert a.summed(None, 2.0) == []
    assert a.next() == Finished(Stage.ABORTED) and a.peer.abort_code is ReasonCode.TIMEOUT


def test_a_nonpositive_stage_timeout_is_refused() -> None:
    peer = sessions()["a"].peer
    with pytest.raises(ConfigError, match="stage_timeout 0 must be positive"):
        SecAggSession(peer, 0)


def test_encoded_broadcasts_match_the_messages() -> None:
    a = sessions()["a"]
    sends = a.start(np.zeros(D, np.uint32), 0.0)
    assert {s.to for s in sends if isinstance(s, Send)} == {"b", "c"}
    assert all(encode(decode(s.data)) == s.data for s in sends if isinstance(s, Send))
