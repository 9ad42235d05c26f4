from __future__ import annotations

import pytest

from p2pfed.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--peers", "1"], "--peers must lie in 2..32"),
        (["--chunk-kb", "0"], "--chunk-kb must lie in 1..8192"),
        (["--repeats", "0"], "--repeats must be at least 1"),
    ],
)
def test_bad_arguments_fail_with_one_sentence(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "allreduce", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_anchors_run_gloo_and_a_raw_tcp_ring_on_real_processes() -> None:
    from p2pfed.bench._baseline import gloo_allreduce_s, tcp_ring_bound_s

    # gloo_allreduce_s checks every element of the sum (n) in every process, or raises.
    gloo = gloo_allreduce_s(2, 1, repeats=1, timeout=120)
    tcp = tcp_ring_bound_s(2, 1, repeats=1, timeout=120)
    assert 0 < gloo < 60 and 0 < tcp < 60
