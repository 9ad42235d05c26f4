"""`p2pfed bench dpsgd` on a tiny case: the documented JSON, measured ratios, no fake anchor."""

import json

import pytest

from p2pfed.bench import dpsgd
from p2pfed.cli import main

KEYS = {
    "model", "params", "batch", "plain_step_s", "dpsgd_step_s", "opacus_step_s",
    "plain_peak_mb", "dpsgd_peak_mb", "opacus_peak_mb", "ratio_time", "ratio_mem",
    "node_step_s", "node_step_cpu_s", "ratio_time_node", "meets_time_target_node",
}  # fmt: skip


@pytest.mark.slow  # three fresh interpreters importing torch: 12 s at load 3, 73 s at load 18
def test_tiny_bench_prints_measured_ratios_and_no_opacus_figure_when_absent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dpsgd, "_opacus_version", lambda: None)
    argv = ["bench", "dpsgd", "--json", "--params", "5e4", "--models", "mlp"]
    assert main([*argv, "--batch", "4", "--repeats", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "dpsgd" and "not installed" in doc["opacus"]
    (case,) = doc["cases"]
    assert set(case) >= KEYS and case["model"] == "mlp" and case["batch"] == 4
    assert case["opacus_step_s"] is None and case["opacus_peak_mb"] is None
    assert case["plain_step_s"] > 0 and case["dpsgd_peak_mb"] > 0
    assert case["ratio_time"] == round(case["dpsgd_step_cpu_s"] / case["plain_step_cpu_s"], 3)
    assert case["ratio_mem"] == round(case["dpsgd_peak_mb"] / case["plain_peak_mb"], 3)
    # the member's own noise (ChaCha20) is timed beside the seeded generator's
    assert case["ratio_time_node"] == round(case["node_step_cpu_s"] / case["plain_step_cpu_s"], 3)
    assert len(doc["load_avg"]["before"]) == 3
    noise = doc["noise_cpu_ns_per_value"]
    assert set(noise) == {
        "secure_gaussian", "secure_gaussian_torch", "chacha20_keystream_4_words",
        "torch_normal", "numpy_pcg64",
    }  # fmt: skip
    assert all(v > 0 for v in noise.values())


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("params", [10**6, 10**7])
def test_models_have_the_requested_size(model: str, params: int) -> None:
    built = dpsgd.build(model, params)
    assert sum(p.numel() for p in built.parameters()) == pytest.approx(params, rel=0.01)


def test_bad_options_are_refused_in_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "dpsgd", "--models", "mlp,vgg"])
    assert "argument --models: item 'vgg' of 'mlp,vgg' is not mlp or cnn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "dpsgd", "--params", "1e3"])
    assert "argument --params: item '1e3' of '1e3' is not a parameter count of at least 5e4" in (
        capsys.readouterr().err
    )
