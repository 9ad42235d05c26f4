"""A member that cannot join a round spends no privacy budget on it, and says why it waits."""

from pathlib import Path

import trio
import trio.testing

from tests.test_node import Consortium


async def test_a_member_alone_spends_no_epsilon(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The attack (or failure): every other member is down. The lone member attempts round
    # after round; no cohort ever forms, so nothing may be charged to its ledger.
    c = Consortium(tmp_path, 3)
    async with c.peer(0) as peer:
        for _ in range(3):
            report = await peer.run_round()
            assert not report.committed
        assert peer.next_round == 3  # three attempts, each a new round number
        assert c.ledgers[0].records == ()
        assert peer.epsilon == 0.0
