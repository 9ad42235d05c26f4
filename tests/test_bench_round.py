"""``p2pfed bench round`` on a small model: the JSON's shape and what the daemons recorded."""

import json
import os
import re
import subprocess
import sys

import pytest

from p2pfed.cli import main
from p2pfed.training import sized

STAGES = {"train", "mask", "all-reduce", "unmask", "decode", "commit", "evaluate"}


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_small_model_runs_its_rounds_through_three_daemons_with_ideal_bytes() -> None:
    """Three real daemons, one round of a 20 k-parameter MLP declared by reference.

    33 s at load average 1.2 on 2 cores; about 90 s at load average 10.
    """
    cmd = [sys.executable, "-m", "p2pfed", "bench", "round", "--params", "2e4", "--peers", "3"]
    cmd += ["--rounds", "1", "--privacy", "off", "--timeout", "300", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=380, env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["bench"] == "round" and len(report["load_avg"]["before"]) == 3
    (case,) = report["cases"]
    assert case["privacy"] == "off" and case["peers"] == 3
    assert case["params"] == sized.count(sized.mlp(30, 20_000))  # the model the daemons built
    assert case["committed"] == case["rounds"] == 1
    # A ring all-reduce sends 2(n−1)/n of the update's words per member, plus framing.
    assert case["bytes_ideal"] == int(2 * 2 / 3 * case["params"] * 4)
    assert 1.0 <= case["bytes_per_peer"] / case["bytes_ideal"] <= 1.05
    assert set(case["stages_s"]) == STAGES
    # Each stage is the slowest member's, within that member's round (one round here).
    assert 0 <= min(case["stages_s"].values()) <= max(case["stages_s"].values()) <= case["round_s"]
    assert len(case["peak_rss_mb"]) == len(case["start_s"]) == 3
    assert all(mb > 50 for mb in case["peak_rss_mb"])  # torch alone is more than that
    assert all(s is not None and s > 0 for s in case["start_s"])
    # Polled memory attributed to the stages: none above the peak, none below torch.
    by_stage = case["rss_by_stage_mb"]
    assert set(by_stage) <= STAGES | {"round start"} and "train" in by_stage
    assert 50 < min(by_stage.values()) <= max(by_stage.values()) <= max(case["peak_rss_mb"])
    # CPU seconds of a round per member: something, and no more than 2 cores' worth of it.
    assert len(case["round_cpu_s"]) == 3
    assert all(0 < s <= 2 * case["round_s"] + 0.5 for s in case["round_cpu_s"])


def test_a_rounds_cpu_is_read_off_the_counters_polled_in_its_window() -> None:
    from p2pfed.bench.round import _cpu_per_round

    ends = [
        {"ts": 110.0, "body": {"round": 0, "duration_s": 10.0}},
        {"ts": 130.0, "body": {"round": 1, "duration_s": 5.0}},
    ]
    polled = [(99.0, 1.0), (100.5, 2.0), (110.0, 7.0), (124.0, 8.0), (126.0, 9.5), (131.0, 11.0)]
    # Round 1 ran from 125 to 130: the counter read 8.0 at its start and 9.5 at its end.
    assert _cpu_per_round([ends], [polled], {1}) == [1.5]
    assert _cpu_per_round([ends], [polled], {0, 1}) == [round((6.0 + 1.5) / 2, 2)]
    assert _cpu_per_round([ends, []], [polled, []], {7}) == [None, None]


def test_memory_is_attributed_to_the_stage_whose_window_holds_the_poll() -> None:
    from p2pfed.bench.round import _rss_by_stage

    entry = {"ts": 110.0, "body": {"duration_s": 10.0, "stages_s": [["train", 4], ["mask", 6]]}}
    polled = [(100.05, 300), (102.0, 500), (104.5, 900), (109.0, 700), (111.0, 5000)]
    assert _rss_by_stage([[entry]], [polled]) == {
        "round start": round(300 / 1024, 1),
        "train": round(500 / 1024, 1),
        "mask": round(900 / 1024, 1),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "2"], r"--peers must lie in 3\.\.16"),
        (["--params", "0"], r"--params must lie in 1\.\.1e9"),
        (["--rounds", "0"], r"--rounds must lie in 1\.\.100"),
    ],
)
def test_bad_options_are_refused_in_one_sentence(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "round", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert re.search(message, err), err


def test_an_unknown_privacy_case_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "round", "--privacy", "off,central"])
    assert "argument --privacy: item 'central' of 'off,central' is not one of off, dpsgd, ddp" in (
        capsys.readouterr().err
    )


def test_the_sized_models_come_close_to_the_asked_parameter_count() -> None:
    import torch

    for params in (2_000, 20_000, 1_000_000):
        for build in (sized.mlp, sized.cnn):
            model = build(30, params)
            assert abs(sized.count(model) - params) / params < 0.02
            assert model(torch.zeros(2, 30)).shape == (2, 2)


def test_a_sized_model_refuses_bad_sizes_in_one_sentence() -> None:
    from p2pfed.errors import ConfigError

    with pytest.raises(ConfigError, match="params ≥ 1"):
        sized.mlp(30, 0)
    with pytest.raises(ConfigError, match="at least one hidden layer"):
        sized.mlp(30, 1000, depth=0)
