"""A model by TorchScript file: ``[model] torchscript = "model.pt"``, pinned by its SHA-256.

The daemon trains the scripted module like any other (its BatchNorm statistics in the
shared state); the key excludes ``kind``/``factory``; a study protocol records the file's
digest, and a member holding another file is refused by that digest.
"""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import bn_mlp

from p2pfed.config import load_config
from p2pfed.daemon import prepare
from p2pfed.daemon.build import build_trainer
from p2pfed.demo import DemoSettings, build_consortium
from p2pfed.errors import ConfigError
from p2pfed.governance.models import load_model
from p2pfed.training.models import load_torchscript
from p2pfed.training.trainer import LocalTrainer as Trainer


def scripted(path: Path, seed: int) -> Path:
    """``bn_mlp(30)`` with the weights of ``seed``, saved as TorchScript at ``path``."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # torch 2.9 deprecates scripting; files stay loadable
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(bn_mlp(30)), str(path))
    return path


def with_model(config: Path, lines: str, privacy: str = "off") -> Path:
    """The member's config with ``lines`` in ``[model]`` and ``[privacy] mode`` set."""
    text = config.read_text().replace("[model]\n", f"[model]\n{lines}\n", 1)
    text = text.replace('mode = "dp-sgd"', f'mode = "{privacy}"')
    # The normalisation is left to a study protocol (an unfilled one has centre 0, scale 1).
    lines_kept = [line for line in text.splitlines() if not line.startswith(("center", "scale"))]
    config.write_text("\n".join(lines_kept) + "\n")
    return config


@pytest.fixture
def member(tmp_path: Path) -> Path:
    c = build_consortium(tmp_path / "demo", DemoSettings(peers=3, rounds=1))
    scripted(c.hospitals[0].config.with_name("model.pt"), seed=1)
    return c.hospitals[0].config


def test_a_torchscript_model_trains_and_shares_its_buffers(member: Path) -> None:
    config = with_model(member, 'torchscript = "model.pt"')
    config.write_text(config.read_text().replace('kind = "logistic"\n', ""))
    prepared = prepare(load_config(config))
    trainer = build_trainer(prepared)
    assert isinstance(trainer.model, torch.jit.ScriptModule)
    assert "1.running_mean" in trainer.layout.names  # buffers travel like parameters
    start = load_torchscript(member.with_name("model.pt")).state_dict()
    assert all(torch.equal(start[k], v) for k, v in trainer.get_state().items())
    before = trainer.shared_weights()
    result = trainer.fit(trainer.get_state(), 0)
    assert result.n_examples == len(prepared.train)
    assert not (trainer.shared_weights() == before).all()
    assert trainer.evaluate(result.state)["accuracy"] > 0.8


@pytest.mark.parametrize(
    ("lines", "privacy", "error"),
    [
        (
            'torchscript = "model.pt"\nfactory = "tiny_models:bn_mlp"',
            "off",
            r"\[model\] torchscript replaces kind and factory: set exactly one",
        ),
        (
            'torchscript = "model.pt"\nkind = "mlp"',
            "off",
            r"\[model\] torchscript replaces kind and factory: set exactly one",
        ),
    ],
)
def test_torchscript_with_another_model_key_is_refused(
    member: Path, lines: str, privacy: str, error: str
) -> None:
    config = with_model(member, lines, privacy)
    config.write_text(config.read_text().replace('kind = "logistic"\n', ""))
    with pytest.raises(ConfigError, match=error):
        load_config(config)


def test_a_missing_foreign_or_dp_sgd_torchscript_file_is_refused(member: Path) -> None:
    config = with_model(member, 'torchscript = "absent.pt"')
    with pytest.raises(ConfigError, match=r"torchscript .*absent.pt: no such file"):
        build_trainer(prepare(load_config(config)))
    member.with_name("weights.pt").write_bytes(b"not a model")
    config.write_text(config.read_text().replace("absent.pt", "weights.pt"))
    with pytest.raises(ConfigError, match=r"weights.pt is not a TorchScript file") as info:
        build_trainer(prepare(load_config(config)))
    assert "\n" not in str(info.value)
    config.write_text(config.read_text().replace("weights.pt", "model.pt"))
    config.write_text(config.read_text().replace('mode = "off"', 'mode = "dp-sgd"'))
    with pytest.raises(ConfigError, match=r"cannot train under \[privacy\] mode = \"dp-sgd\""):
        build_trainer(prepare(load_config(config)))


def test_the_study_protocol_pins_the_file_by_its_digest(member: Path) -> None:
    from p2pfed.cli import main
    from p2pfed.daemon.study import check_matches
    from p2pfed.identity import StudyProtocol

    config = with_model(member, 'torchscript = "model.pt"')
    protocol = member.with_name("protocol.json")
    args = ["protocol", "init", str(protocol), "--consortium", "c", "--config", str(config)]
    assert main([*args, "--from-data", str(member.with_name("patients.csv"))]) == 0
    digest = hashlib.sha256(member.with_name("model.pt").read_bytes()).hexdigest()
    assert StudyProtocol.load(protocol).model == f"torchscript sha256:{digest}"
    check_matches(StudyProtocol.load(protocol), load_config(config))  # the agreed file: fine

    # Another member's file: the same architecture, other starting weights.
    scripted(member.with_name("model.pt"), seed=2)
    other = hashlib.sha256(member.with_name("model.pt").read_bytes()).hexdigest()
    with pytest.raises(ConfigError) as info:
        check_matches(StudyProtocol.load(protocol), load_config(config))
    message = str(info.value)
    assert f"has SHA-256 {other}, but the study protocol" in message
    assert f"pins model 'torchscript sha256:{digest}'" in message
    assert "\n" not in message


def _exported(
    config: Path, tmp_path: Path
) -> tuple[dict[str, np.ndarray], dict[str, object], Trainer]:
    """Train one round, store the model as the daemon does, export it with ``--config``."""
    from p2pfed.cli import main
    from p2pfed.governance.models import MODELS_DIR, ModelRegistry, import_model, tensors_from_flat

    prepared = prepare(load_config(config))
    trainer = build_trainer(prepared)
    trainer.fit(trainer.get_state(), 0)
    layout = trainer.layout
    registry = ModelRegistry(prepared.state_dir / MODELS_DIR)
    weights = tensors_from_flat(layout.names, layout.shapes, trainer.shared_weights())
    registry.add(0, weights, parent_hash=None)
    out = tmp_path / "export" / "model.pt"
    out.parent.mkdir()
    assert main(["model", "export", "latest", "--config", str(config), "--out", str(out)]) == 0
    manifest, tensors = import_model(out)
    with pytest.raises(ConfigError, match=r"load_model cannot rebuild: build it with your"):
        load_model(out)
    return dict(tensors), manifest.export, trainer


@pytest.mark.parametrize("kind", ["torchscript", "factory"])
def test_model_export_writes_a_factory_or_torchscript_model(
    member: Path, tmp_path: Path, kind: str
) -> None:
    line = (
        'torchscript = "model.pt"'
        if kind == "torchscript"
        else ('factory = "tiny_models:bn_mlp"\nargs = { n_features = 30 }')
    )
    tensors, export, trainer = _exported(with_model(member, line), tmp_path)
    if kind == "torchscript":
        digest = hashlib.sha256(member.with_name("model.pt").read_bytes()).hexdigest()
        assert export["architecture"]["kind"] == f"torchscript sha256:{digest}"
        model = load_torchscript(member.with_name("model.pt"))
    else:
        assert export["architecture"]["kind"] == "tiny_models:bn_mlp(n_features=30)"
        model = bn_mlp(30)
    # The exported weights rebuild the trained model (BatchNorm statistics included).
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    missing, extra = model.load_state_dict(state, strict=False)
    # A step counter is no state to share (eager BatchNorm fills it in itself when absent).
    assert set(missing) <= {"1.num_batches_tracked"} and not extra
    model.eval()
    trainer.model.eval()
    x = torch.randn(5, 30, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), trainer.model(x))
