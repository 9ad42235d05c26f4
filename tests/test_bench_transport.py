import json
from argparse import ArgumentTypeError

import pytest

from p2pfed.bench.transport import parse_sizes
from p2pfed.cli import main


def test_sizes_are_parsed_and_bad_entries_named() -> None:
    assert parse_sizes("1, 16,64") == [1, 16, 64]
    with pytest.raises(ArgumentTypeError, match="'x' of '1,x' is not a whole number of MiB"):
        parse_sizes("1,x")
    with pytest.raises(ArgumentTypeError, match="'4097'"):
        parse_sizes("4097")


@pytest.mark.slow
@pytest.mark.network
def test_bench_runs_both_transports_in_separate_processes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "transport", "--sizes", "1", "--streams", "2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["bench"] == "transport"
    (case,) = document["cases"]
    assert case["size_mb"] == 1 and case["streams"] == 2
    for key in (
        "libp2p_mb_s",
        "tls_mb_s",
        "tcp_mb_s",
        "receiver_peak_rss_mb",
        "tls_receiver_peak_rss_mb",
        "libp2p_connect_ms",
        "tls_connect_ms",
    ):
        assert case[key] > 0, key
    # A receiver holds the 1 MiB payload plus an interpreter: tens of MB, not nothing.
    assert 10 < case["receiver_peak_rss_mb"] < 1000
