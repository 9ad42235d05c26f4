import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.cli import main
from p2pfed.errors import ConfigError, DataError, IntegrityError, LocalError
from p2pfed.governance.models import (
    ModelRegistry,
    deserialize_model,
    flat_from_tensors,
    import_model,
    manifest_path_for,
    model_hash,
    serialize_model,
    tensors_from_flat,
)
from p2pfed.training import ParameterLayout
from tests.governance_helpers import FakeClock


def layout_and_model(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return ParameterLayout.of(model), model


def tensors_of(seed=0):
    layout, model = layout_and_model(seed)
    return tensors_from_flat(layout.names, layout.shapes, layout.flatten(model))


def fill(registry, rounds=3):
    parent = None
    manifests = []
    for r in range(1, rounds + 1):
        m = registry.add(
            r,
            tensors_of(r),
            parent_hash=parent,
            participants=["h2", "h1"],
            dp={"epsilon": 0.5 * r, "delta": 1e-5},
            metrics={"accuracy": 0.8 + 0.01 * r},
        )
        parent = m.model_hash
        manifests.append(m)
    return manifests


def test_hash_covers_names_shapes_dtypes_and_values():
    t = tensors_of()
    base = model_hash(t)
    assert base == model_hash(tensors_of())
    renamed = [("x" + t[0][0], t[0][1]), *t[1:]]
    reshaped = [(t[0][0], t[0][1].reshape(-1)), *t[1:]]
    retyped = [(t[0][0], t[0][1].astype(np.float64)), *t[1:]]
    nudged = [(t[0][0], t[0][1] + np.float32(1e-7)), *t[1:]]
    reordered = [t[1], t[0], *t[2:]]
    hashes = {model_hash(v) for v in (renamed, reshaped, retyped, nudged, reordered)}
    assert base not in hashes and len(hashes) == 5


def test_serialisation_is_little_endian_and_fixed():
    t = [("w", np.array([1.0], dtype=np.float32))]
    data = serialize_model(t)
    assert data.endswith(np.float32(1.0).tobytes()) and data.endswith(b"\x00\x00\x80\x3f")
    big = [("w", np.array([1.0], dtype=">f4"))]
    assert model_hash(big) == model_hash(t)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.lists(st.integers(0, 3), max_size=3),
            st.sampled_from(["float32", "float64", "int64", "uint8"]),
        ),
        max_size=4,
        unique_by=lambda x: x[0],
    )
)
def test_serialisation_round_trips(specs):
    rng = np.random.default_rng(0)
    tensors = [
        (name, (rng.standard_normal(int(np.prod(shape))) * 10).astype(dt).reshape(shape))
        for name, shape, dt in specs
    ]
    back = deserialize_model(serialize_model(tensors))
    assert [n for n, _ in back] == [n for n, _ in tensors]
    for (_, a), (_, b) in zip(back, tensors, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_deserialize_refuses_damage():
    data = serialize_model(tensors_of())
    with pytest.raises(IntegrityError, match="truncated"):
        deserialize_model(data[:-3])
    with pytest.raises(IntegrityError, match="bad magic"):
        deserialize_model(b"X" + data[1:])
    with pytest.raises(IntegrityError, match="trailing"):
        deserialize_model(data + b"\x00")
    with pytest.raises(DataError, match="appears twice"):
        model_hash(tensors_of()[:1] * 2)
    with pytest.raises(DataError, match="dtype"):
        model_hash([("c", np.zeros(2, dtype=np.complex64))])


def test_flat_round_trip_matches_the_layout():
    layout, model = layout_and_model()
    vec = layout.flatten(model)
    tensors = tensors_from_flat(layout.names, layout.shapes, vec)
    assert np.array_equal(flat_from_tensors(tensors), vec)
    with pytest.raises(DataError, match="expected"):
        tensors_from_flat(layout.names, layout.shapes, vec[:-1])


def test_registry_add_list_load_and_lineage(tmp_path):
    reg = ModelRegistry(tmp_path / "models", clock=FakeClock())
    m1, m2, m3 = fill(reg)
    assert [m.round for m in reg.versions()] == [1, 2, 3]
    assert reg.resolve("latest") == m3 and reg.resolve("2") == m2
    assert reg.resolve(m1.model_hash[:8]) == m1
    assert m3.participants == ("h1", "h2") and m3.metrics == {"accuracy": pytest.approx(0.83)}
    manifest, tensors = reg.load(m2.version)
    assert model_hash(tensors) == m2.model_hash == manifest.model_hash
    assert reg.lineage("latest") == [m3, m2, m1]
    # Re-adding the same model for the same round is idempotent; a different one is refused.
    assert reg.add(2, tensors_of(2), parent_hash=m1.model_hash) == m2
    with pytest.raises(LocalError, match="round 2 already has model"):
        reg.add(2, tensors_of(9), parent_hash=m1.model_hash)


def test_unwritable_registry_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot store model in"):
        ModelRegistry(blocker / "models").add(1, tensors_of(), parent_hash=None)


def test_lineage_ends_at_an_unknown_parent(tmp_path):
    reg = ModelRegistry(tmp_path, clock=FakeClock())
    m = reg.add(5, tensors_of(), parent_hash="ab" * 32)
    assert reg.lineage("5") == [m, "ab" * 32]


def test_registry_refuses_a_tampered_model(tmp_path):
    reg = ModelRegistry(tmp_path, clock=FakeClock())
    fill(reg, rounds=1)
    path = next(tmp_path.glob("*/model.bin"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        reg.load("latest")


def test_resolve_errors(tmp_path):
    reg = ModelRegistry(tmp_path, clock=FakeClock())
    with pytest.raises(ConfigError, match="holds no models"):
        reg.resolve("latest")
    fill(reg, rounds=2)
    with pytest.raises(ConfigError, match="no model for round 7"):
        reg.resolve("7")
    with pytest.raises(ConfigError, match="not 'latest'"):
        reg.resolve("zz")
    with pytest.raises(ConfigError, match="no model in"):
        reg.resolve("ffffffffff")


def test_export_import_torch_round_trip_and_tamper(tmp_path):
    reg = ModelRegistry(tmp_path / "models", clock=FakeClock())
    fill(reg)
    out, manifest_path = reg.export("latest", tmp_path / "model.pt")
    assert manifest_path == manifest_path_for(out)
    block = json.loads(manifest_path.read_text())["export"]
    assert (block["format"], block["file"]) == ("torch", "model.pt")
    assert block["lineage"] == [m.model_hash for m in reg.lineage("latest")]
    assert "architecture" not in block  # no card without the node's config
    manifest, tensors = import_model(out)
    assert manifest.model_hash == reg.resolve("latest").model_hash
    layout, model = layout_and_model(3)
    assert np.array_equal(flat_from_tensors(tensors), layout.flatten(model))
    # A file whose weights were changed is refused.
    state = torch.load(out, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, out)
    with pytest.raises(IntegrityError, match="does not match its manifest: its hash is"):
        import_model(out)
    # So is a file with a tensor renamed, and one that is not a torch file at all.
    state = {("renamed" if k == first else k): v for k, v in state.items()}
    torch.save(state, out)
    with pytest.raises(IntegrityError, match="are not listed"):
        import_model(out)
    out.write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="not a readable torch tensor file"):
        import_model(out)


def test_import_refuses_a_tampered_manifest(tmp_path):
    reg = ModelRegistry(tmp_path / "models", clock=FakeClock())
    fill(reg, rounds=1)
    out, manifest_path = reg.export("latest", tmp_path / "m.pt")
    doc = json.loads(manifest_path.read_text())
    doc["model_hash"] = "0" * 64
    manifest_path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="the manifest says 0000"):
        import_model(out)
    del doc["round"]
    manifest_path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="malformed: missing field 'round'"):
        import_model(out)


def test_safetensors_export_is_clear_when_unavailable_or_round_trips(tmp_path):
    import importlib.util

    reg = ModelRegistry(tmp_path / "models", clock=FakeClock())
    fill(reg, rounds=1)
    if importlib.util.find_spec("safetensors") is None:
        with pytest.raises(ConfigError, match="optional 'safetensors' package"):
            reg.export("latest", tmp_path / "m.safetensors", "safetensors")
    else:
        out, _ = reg.export("latest", tmp_path / "m.safetensors", "safetensors")
        assert import_model(out)[0].model_hash == reg.resolve("latest").model_hash


def test_model_cli(tmp_path, capsys):
    reg = ModelRegistry(tmp_path / "models", clock=FakeClock())
    m1, m2, m3 = fill(reg)
    r = ["--registry", str(tmp_path / "models")]
    assert main(["model", "list", *r]) == 0
    out = capsys.readouterr().out
    assert m1.version in out and m3.version in out
    assert main(["model", "list", *r, "--json"]) == 0
    assert [d["round"] for d in json.loads(capsys.readouterr().out)] == [1, 2, 3]
    assert main(["model", "show", "latest", *r]) == 0
    out = capsys.readouterr().out
    assert out.index(m3.version) < out.index(m2.version) < out.index(m1.version)
    assert main(["model", "show", "2", *r, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["manifest"]["model_hash"] == m2.model_hash
    assert doc["lineage"] == [m2.model_hash, m1.model_hash]
    target = tmp_path / "out.pt"
    assert main(["model", "export", "latest", *r, "--out", str(target)]) == 0
    assert "out.pt.manifest.json" in capsys.readouterr().out
    assert main(["model", "check", str(target)]) == 0
    assert "OK" in capsys.readouterr().out
    target.write_bytes(b"junk")
    assert main(["model", "check", str(target)]) == 2
    assert "not a readable torch tensor file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["model", "list", "--registry", "/nonexistent/m"],
            "does not exist (pass --config FILE or --registry",
        ),
        (["model", "show", "99", "--registry", "{reg}"], "no model for round 99"),
        (
            ["model", "export", "latest", "--registry", "{reg}", "--out", "/nonexistent/d/x.pt"],
            "x.pt",
        ),
        (["model", "check", "/nonexistent/x.pt"], "cannot read manifest"),
    ],
)
def test_model_cli_one_clear_error(tmp_path, capsys, argv, message):
    reg = ModelRegistry(tmp_path / "models", clock=FakeClock())
    fill(reg, rounds=1)
    argv = [a.replace("{reg}", str(tmp_path / "models")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2pfed: error: ") and message in err and err.count("\n") == 1
