import json
from argparse import ArgumentTypeError

import pytest

from p2pfed.bench.transport import _case_figures, aead_rates, cipher_bound_ratio, parse_sizes
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
    assert set(document["aead_mb_s"]) == {
        "chacha20_poly1305_seal",
        "chacha20_poly1305_open",
        "aes_256_gcm_seal",
        "aes_256_gcm_open",
    }
    assert 0 < case["libp2p_cipher_bound_ratio"] <= 1
    assert 0 < case["tls_cipher_bound_ratio"] <= 1
    # A receiver holds the 1 MiB payload plus an interpreter: tens of MB, not nothing.
    assert 10 < case["receiver_peak_rss_mb"] < 1000


def test_each_kinds_figures_keep_their_report_names() -> None:
    # The names docs/benchmarks.md and older reports use, written out once here.
    def medians(mb_s: float) -> dict[str, float]:
        return {
            "mb_s": mb_s,
            "peak_rss_mb": mb_s + 1,
            "connect_ms": mb_s + 2,
            "warm_connect_ms": mb_s + 3,
            "cpu_mb_s": mb_s + 4,
            "cpu_s": mb_s + 5,
            "receiver_cpu_s": mb_s + 6,
        }

    figures = _case_figures({"noise": medians(100), "tls": medians(50), "tcp": medians(200)})
    assert figures == {
        "libp2p_mb_s": 100,
        "tcp_mb_s": 200,
        "ratio": 0.5,
        "receiver_peak_rss_mb": 101,
        "tcp_receiver_peak_rss_mb": 201,
        "libp2p_connect_ms": 102,
        "libp2p_warm_connect_ms": 103,
        "libp2p_cpu_mb_s": 104,
        "tcp_cpu_mb_s": 204,
        "libp2p_sender_cpu_s": 105,
        "libp2p_receiver_cpu_s": 106,
        "tls_mb_s": 50,
        "tls_ratio": 0.25,
        "tls_receiver_peak_rss_mb": 51,
        "tls_connect_ms": 52,
        "tls_warm_connect_ms": 53,
        "tls_cpu_mb_s": 54,
        "tls_sender_cpu_s": 55,
        "tls_receiver_cpu_s": 56,
    }


def test_the_cipher_bound_adds_the_ciphers_cpu_to_tcps_own() -> None:
    # TCP's CPU allows 2,500 MB/s, opening 1,400 (slower than sealing): 1/(1/2500 + 1/1400)
    # = 897.4 MB/s, 0.449 of the 2,000 MB/s TCP moved.
    assert cipher_bound_ratio(2000, 2500, 1500, 1400) == 0.449
    # A cipher costing nothing leaves TCP's rate, never more.
    assert cipher_bound_ratio(2000, 2500, 1e12, 1e12) == 1.0


def test_aead_rates_name_each_channels_cipher_both_ways() -> None:
    rates = aead_rates(total=1 << 20, repeats=1)
    assert sorted(rates) == [
        "aes_256_gcm_open",
        "aes_256_gcm_seal",
        "chacha20_poly1305_open",
        "chacha20_poly1305_seal",
    ]
    assert all(rate > 0 for rate in rates.values())
