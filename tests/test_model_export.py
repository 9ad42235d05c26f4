"""A model a clinician's team can load: export with its card, ``load_model``, ``predict``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from p2pfed.cli import main
from p2pfed.config import load_config
from p2pfed.daemon import prepare
from p2pfed.daemon.build import build_trainer
from p2pfed.daemon.prepare import load_data
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import DataError, IntegrityError
from p2pfed.governance.models import (
    MODELS_DIR,
    ModelRegistry,
    load_model,
    manifest_path_for,
    tensors_from_flat,
)
from p2pfed.training.data import train_test_split


def _trained_node(tmp_path: Path, normalisation: str):
    """A demo hospital after three local rounds, its model stored as the daemon stores it."""
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=2))
    config_path = c.hospitals[0].config
    if normalisation == "local":  # no agreed constants: the node z-scores with its own
        text = config_path.read_text()
        config_path.write_text(re.sub(r"(?m)^(center|scale) = .*\n", "", text))
    prepared = prepare(load_config(config_path))
    assert bool(prepared.config.schema.center) == (normalisation == "agreed")
    trainer = build_trainer(prepared)
    for _ in range(3):
        delta = trainer.train_round(prepared.train, trainer.shared_weights()).update
        trainer.load_shared(trainer.shared_weights() + delta)
    layout = trainer.layout
    registry = ModelRegistry(prepared.state_dir / MODELS_DIR)
    weights = trainer.shared_weights()
    registry.add(
        2,
        tensors_from_flat(layout.names, layout.shapes, weights),
        parent_hash=None,
        dp={"epsilon": 0.5, "delta": 1e-5},
    )
    return config_path, prepared, trainer


@pytest.fixture(scope="module")
def agreed(tmp_path_factory: pytest.TempPathFactory):
    """One trained node with the schema's agreed constants, shared by the read-only tests."""
    return _trained_node(tmp_path_factory.mktemp("agreed"), "agreed")


@pytest.mark.parametrize("normalisation", ["agreed", "local"])
def test_an_exported_model_scores_raw_held_out_rows_as_the_daemon_does(
    tmp_path: Path, normalisation: str
) -> None:
    config_path, prepared, trainer = _trained_node(tmp_path, normalisation)
    inside = trainer.score(prepared.test)
    out = tmp_path / "export" / "model.pt"
    out.parent.mkdir()
    argv = ["model", "export", "latest", "--config", str(config_path), "--out", str(out)]
    assert main(argv) == 0

    manifest = json.loads(manifest_path_for(out).read_text())["export"]
    assert manifest["architecture"]["kind"] == prepared.config.model.kind
    assert manifest["features"] == list(prepared.train.feature_names)
    assert manifest["normalisation"]["source"] == normalisation
    assert manifest["round"] == 2 and manifest["privacy"] == {"epsilon": 0.5, "delta": 1e-5}
    assert len(manifest["lineage"]) == 1

    # Raw held-out rows, as the clinician's team has them: by column name, in another order.
    raw = load_data(prepared.config)
    _, test = train_test_split(
        raw, prepared.config.data.test_fraction, np.random.default_rng(prepared.config.model.seed)
    )
    rows = {name: test.x[:, i].tolist() for i, name in reversed(list(enumerate(raw.feature_names)))}
    model, predict = load_model(out.parent)
    probabilities = predict(rows)
    accuracy = float((probabilities.argmax(axis=1) == test.y).mean())
    assert accuracy == pytest.approx(inside.accuracy, abs=1e-6)  # float32 inside
    import torch

    with torch.no_grad():
        expected = torch.softmax(trainer.model(torch.from_numpy(prepared.test.x)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    assert not model.training


def test_predict_names_a_missing_column_and_refuses_missing_values(tmp_path: Path, agreed) -> None:
    config_path, prepared, _ = agreed
    out = tmp_path / "model.pt"
    assert main(["model", "export", "2", "--config", str(config_path), "--out", str(out)]) == 0
    _, predict = load_model(out)
    names = prepared.train.feature_names
    rows = {n: [1.0, 2.0] for n in names}
    assert predict(rows).shape == (2, 2)
    with pytest.raises(DataError, match=f"no column '{re.escape(names[3])}'"):
        predict({n: v for n, v in rows.items() if n != names[3]})
    with pytest.raises(DataError, match="missing or infinite"):
        predict(rows | {names[0]: [1.0, float("nan")]})


def test_a_model_exported_without_its_card_cannot_be_loaded_blind(tmp_path: Path, agreed) -> None:
    _, prepared, _ = agreed
    out = tmp_path / "model.pt"
    registry = str(prepared.state_dir / MODELS_DIR)
    assert main(["model", "export", "latest", "--registry", registry, "--out", str(out)]) == 0
    with pytest.raises(IntegrityError, match="no model card"):
        load_model(out)


def test_a_card_with_an_impossible_normalisation_is_refused(tmp_path: Path, agreed) -> None:
    """The card is checked on load (the model hash covers the weights, not the card)."""
    config_path, _, _ = agreed
    out = tmp_path / "model.pt"
    assert main(["model", "export", "latest", "--config", str(config_path), "--out", str(out)]) == 0
    path = manifest_path_for(out)
    doc = json.loads(path.read_text())
    doc["export"]["normalisation"]["scale"][0] = -1.0
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="scales positive"):
        load_model(out)


def test_model_commands_find_the_registry_from_the_config(
    agreed, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, _, _ = agreed
    assert main(["model", "list", "--config", str(config_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["round"] for m in listed] == [2]
    assert main(["model", "show", "latest", "--config", str(config_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["round"] == 2


def test_the_safetensors_option_is_offered_only_where_the_package_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    with pytest.raises(SystemExit):
        main(["model", "export", "--help"])
    shown = "safetensors" in capsys.readouterr().out
    assert shown == (importlib.util.find_spec("safetensors") is not None)


def test_an_export_without_a_personal_layer_is_not_rebuilt_half_empty(tmp_path: Path) -> None:
    from p2pfed.governance.models import ModelCard

    registry = ModelRegistry(tmp_path / "models")
    weight = np.ones((2, 3), np.float32)  # "0.bias" stayed on its node (personal_prefixes)
    registry.add(0, [("0.weight", weight)], parent_hash=None)
    card = ModelCard(
        kind="logistic",
        hidden=(),
        seed=0,
        n_classes=2,
        features=("a", "b", "c"),
        labels=(0, 1),
        center=(0.0, 0.0, 0.0),
        scale=(1.0, 1.0, 1.0),
        normalisation="agreed",
        configured_rounds=1,
        privacy_mode="off",
    )
    out, _ = registry.export("latest", tmp_path / "m.pt", card=card)
    with pytest.raises(IntegrityError, match=r"lacks \['0.bias'\]"):
        load_model(out)
