import json

from p2pfed.cli import main


def test_bench_prints_the_documented_json(capsys):
    args = "bench secagg --json --n 3 12 --d 2000 --repeats 1 --procs 2"
    assert main(args.split()) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "secagg" and doc["keystream_gb_s"] > 0
    assert [(c["n"], c["d"]) for c in doc["cases"]] == [(3, 2000), (12, 2000)]
    for case in doc["cases"]:
        for key in (
            "graph",
            "mask_s",
            "mask_bound_s",
            "protocol_s",
            "plain_sum_s",
            "bytes_per_peer",
            "masked_vector_bytes",
        ):
            assert key in case
        assert case["exact"] is True
        assert case["masked_vector_bytes"] == 4 * 2000
        assert case["bytes_per_peer"] > case["masked_vector_bytes"]
        assert case["peer_peak_bytes"] > 0
        assert case["protocol_d"] == case["d"]  # never downsized
        assert case["multiprocess"]["procs"] == 2 and case["multiprocess"]["exact"] is True
        assert case["multiprocess"]["peer_round_cpu_s"] > 0
        assert case["plain_sum_s"] > 0 and case["protocol_vs_plain_sum_x"] > 1


def test_a_case_over_the_memory_budget_is_refused_naming_the_memory(capsys):
    args = ["bench", "secagg", "--json", "--n", "128", "--d", "10000000", "--repeats", "1"]
    assert main([*args, "--memory-budget-mb", "100"]) == 2
    err = capsys.readouterr().err
    assert "MiB" in err and "--memory-budget-mb 100" in err and "Traceback" not in err


def test_bench_refuses_bad_sizes(capsys):
    assert main(["bench", "secagg", "--n", "2"]) == 2
    assert "--n" in capsys.readouterr().err
