"""The daemon loads a model by reference: ``[model] factory = "module:function"`` with ``args``.

A member's config names ``tests/tiny_models.py``; the model must fit the data (one sentence
otherwise), its BatchNorm statistics enter the exchanged state, and a study protocol pins
the factory and its arguments.
"""

import os
from pathlib import Path

import pytest

from p2pfed.config import load_config
from p2pfed.daemon import prepare
from p2pfed.daemon.build import build_trainer
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import ConfigError


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c = build_consortium(tmp_path_factory.mktemp("demo"), DemoSettings(peers=3, rounds=1))
    return c.hospitals[0].config


def with_model(config: Path, lines: str) -> Path:
    """The member's config with ``lines`` in ``[model]`` and DP-SGD off (BatchNorm mixes rows)."""
    text = config.read_text().replace("[model]\n", f"[model]\n{lines}\n", 1)
    text = text.replace('mode = "dp-sgd"', 'mode = "off"')
    # The normalisation is left to a study protocol (an unfilled one has centre 0, scale 1).
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("center", "scale")))
    out = config.with_name("factory.toml")
    out.write_text(text)
    return out


def test_a_factory_model_is_built_with_its_args_and_shares_its_statistics(member: Path) -> None:
    config = with_model(member, 'factory = "tiny_models:bn_mlp"\nargs = { n_features = 30 }')
    prepared = prepare(load_config(config))
    trainer = build_trainer(prepared)
    assert "1.running_mean" in trainer.layout.names  # BatchNorm statistics are averaged
    assert "1.num_batches_tracked" not in trainer.layout.names
    before = trainer.shared_weights()
    result = trainer.fit(trainer.get_state(), 0)
    assert result.n_examples == len(prepared.train)
    assert not (trainer.shared_weights() == before).all()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("args = { n_features = 5 }", r"cannot take the data's 30 features per row"),
        ("args = { n_features = 30, classes = 3 }", r"outputs shape \[3\] per row, but the data"),
        ("args = { n_feature = 30 }", r"refused \[model\] args"),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_refused_in_one_sentence(
    member: Path, lines: str, message: str
) -> None:
    config = with_model(member, f'factory = "tiny_models:bn_mlp"\n{lines}')
    with pytest.raises(ConfigError, match=message) as info:
        build_trainer(prepare(load_config(config)))
    assert "\n" not in str(info.value)


def test_a_factory_that_is_not_a_model_or_not_there_is_refused(member: Path) -> None:
    wrong = with_model(member, 'factory = "tiny_models:not_a_model"\nargs = { n_features = 3 }')
    with pytest.raises(ConfigError, match=r"returned str, not a Module"):
        build_trainer(prepare(load_config(wrong)))
    missing = with_model(member, 'factory = "tiny_models:absent"')
    with pytest.raises(ConfigError, match=r"cannot be imported"):
        build_trainer(prepare(load_config(missing)))
    with pytest.raises(ConfigError, match=r"\[model\] factory 'resnet' must look like"):
        load_config(with_model(member, 'factory = "resnet"'))
    with pytest.raises(ConfigError, match=r"\[model\] args are given without a factory"):
        load_config(with_model(member, "args = { width = 3 }"))


def test_the_study_protocol_pins_the_factory_and_its_args(member: Path) -> None:
    from p2pfed.cli import main
    from p2pfed.daemon.study import check_matches
    from p2pfed.identity import StudyProtocol

    agreed = with_model(member, 'factory = "m:f"\nargs = { width = 8, norm = "g" }')
    assert load_config(agreed).model.reference() == "m:f(norm='g', width=8)"
    protocol = member.with_name("protocol.json")
    args = ["protocol", "init", str(protocol), "--consortium", "c", "--config", str(agreed)]
    assert main([*args, "--from-data", str(member.with_name("patients.csv"))]) == 0
    check_matches(StudyProtocol.load(protocol), load_config(agreed))  # the same model: fine
    other = load_config(with_model(member, 'factory = "m:f"\nargs = { width = 9, norm = "g" }'))
    with pytest.raises(ConfigError, match=r"\[model\] factory = \"m:f\(norm='g', width=9\)\""):
        check_matches(StudyProtocol.load(protocol), other)


def test_batchnorm_under_dp_sgd_is_refused_when_the_trainer_is_built(member: Path) -> None:
    config = with_model(member, 'factory = "tiny_models:bn_mlp"\nargs = { n_features = 30 }')
    config.write_text(config.read_text().replace('mode = "off"', 'mode = "dp-sgd"'))
    with pytest.raises(ConfigError, match=r"BatchNorm.*GroupNorm"):
        build_trainer(prepare(load_config(config)))


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_three_daemons_train_a_factory_model_with_batchnorm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real daemons load tests/tiny_models.py by reference and end on one model.

    12 s at load average 1.3 on 2 cores; 90 s at load average 15.
    """
    from p2pfed.consortium import launch, stop, watch

    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=2))
    for h in c.hospitals:
        with_model(h.config, 'factory = "tiny_models:bn_mlp"\nargs = { n_features = 30 }')
        h.config.write_text(h.config.with_name("factory.toml").read_text())
    try:
        launch(c)
        final = watch(c, timeout=360)
    finally:
        stop(c)
    assert [s["completed_round"] for s in final] == [1, 1, 1]
    assert len({s["model_digest"] for s in final}) == 1
