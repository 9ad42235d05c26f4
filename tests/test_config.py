from pathlib import Path

import pytest

from p2pfed.config import load_config, render_default
from p2pfed.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_default_template_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, render_default("St Mary's")))
    assert cfg.node.name == "St Mary's"
    assert cfg.privacy.mode == "distributed" and cfg.secagg.enabled
    assert cfg.path(cfg.privacy.ledger) == tmp_path.resolve() / "state" / "privacy.ledger"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            '[node]\nname = "a"\n[privacy]\nepsilon_budgt = 3\n',
            r"\[privacy\] epsilon_budgt is not a known setting",
        ),
        ('[node]\nname = "a"\n[privacy]\ndelta = 2.0\n', r"\[privacy\] delta must be in \(0, 1\)"),
        ('[node]\nname = "a"\n[rounds]\nmode = "star"\n', r"\[rounds\] mode must be one of"),
        (
            '[node]\nname = "a"\n[training]\nbatch_size = "big"\n',
            r"\[training\] batch_size must be an integer",
        ),
        (
            '[node]\nname = "a"\n[training]\nlearning_rate = true\n',
            r"learning_rate must be a number",
        ),
        ('[node]\nname = "a"\n[model]\nhidden = 3\n', r"\[model\] hidden must be a list"),
        ('[node]\nname = "a"\n[data]\npath = "x.csv"\nbuiltin = "digits"\n', r"exactly one"),
        ("[rounds]\nrounds = 3\n", r"node is required"),
        ('[node]\nname = "a"\ncolour = 1\n', r"\[node\] colour is not a known setting"),
        ('privacy = 3\n[node]\nname = "a"\n', r"privacy must be a table"),
        ('[node\nname = "a"\n', r"not valid TOML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
