from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ConfigError, DataError, IntegrityError
from p2pfed.training import (
    Dataset,
    LocalTrainer,
    ParameterLayout,
    TrainingConfig,
    build_model,
    dirichlet_split,
    load_builtin,
    load_csv,
    train_test_split,
)


def standardised_breast_cancer() -> tuple[Dataset, Dataset]:
    data = load_builtin("breast_cancer")
    train, test = train_test_split(data, 0.25, np.random.default_rng(0))
    mu, sd = train.x.mean(axis=0), train.x.std(axis=0) + 1e-6
    scale = lambda d: Dataset((d.x - mu) / sd, d.y, d.feature_names, d.name)  # noqa: E731
    return scale(train), scale(test)


def test_builtin_datasets() -> None:
    bc = load_builtin("breast_cancer")
    assert bc.x.shape == (569, 30) and set(np.unique(bc.y)) == {0, 1}
    assert set(np.unique(load_builtin("diabetes").y)) == {0, 1}
    assert load_builtin("digits").x.shape[1] == 64
    with pytest.raises(DataError, match="unknown built-in"):
        load_builtin("mnist")


def test_csv_loading_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "site.csv"
    p.write_text("age,bp,label\n50,120,1\n61,,0\n")
    d = load_csv(p, "label")
    assert d.feature_names == ("age", "bp") and np.isnan(d.x[1, 1]) and d.y.tolist() == [1, 0]
    cases = {
        "age,bp,label\n50,abc,1\n": "non-numeric 'abc'",
        "age,bp,label\n50,1,1.5\n": "not a non-negative integer",
        "age,bp,label\n50,1\n": "2 cells where the header has 3",
        "age,bp\n50,1\n": "no label column 'label'",
        "": "empty",
    }
    for content, match in cases.items():
        p.write_text(content)
        with pytest.raises(DataError, match=match):
            load_csv(p, "label")
    p.write_text("age,bp,label\n1,2,0\n")
    with pytest.raises(DataError, match="no feature column 'weight'"):
        load_csv(p, "label", ["age", "weight"])
    with pytest.raises(DataError, match="no such data file"):
        load_csv(tmp_path / "nope.csv", "label")


@settings(max_examples=40, deadline=None)
@given(parts=st.integers(1, 8), alpha=st.floats(0.05, 10.0), seed=st.integers(0, 2**31))
def test_dirichlet_split_is_a_partition(parts: int, alpha: float, seed: int) -> None:
    labels = np.repeat(np.arange(3), 40)
    split = dirichlet_split(labels, parts, alpha, np.random.default_rng(seed))
    joined = np.sort(np.concatenate(split))
    np.testing.assert_array_equal(joined, np.arange(len(labels)))
    assert all(len(s) >= 2 for s in split)


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = np.repeat(np.arange(2), 500)

    def skew(alpha: float) -> float:
        parts = dirichlet_split(labels, 10, alpha, np.random.default_rng(1))
        return float(np.mean([abs(labels[p].mean() - 0.5) for p in parts]))

    assert skew(0.1) > skew(1.0) > skew(100.0)


def test_trainer_learns_and_returns_update() -> None:
    train, test = standardised_breast_cancer()
    model = build_model("logistic", 30, 2, seed=0)
    trainer = LocalTrainer(
        model, TrainingConfig(local_epochs=3, learning_rate=0.1), torch.Generator().manual_seed(0)
    )
    w0 = trainer.shared_weights()
    result = trainer.train_round(train, w0)
    np.testing.assert_allclose(trainer.shared_weights(), w0 + result.update, atol=1e-6)
    assert trainer.score(test).accuracy > 0.93


def test_training_is_reproducible() -> None:
    train, _ = standardised_breast_cancer()

    def run() -> np.ndarray:
        t = LocalTrainer(
            build_model("mlp", 30, 2, seed=3), TrainingConfig(), torch.Generator().manual_seed(5)
        )
        return t.train_round(train, t.shared_weights()).update

    np.testing.assert_array_equal(run(), run())


def test_fedprox_keeps_update_smaller() -> None:
    train, _ = standardised_breast_cancer()
    norms = []
    for mu in (0.0, 5.0):
        t = LocalTrainer(
            build_model("logistic", 30, 2, seed=0),
            TrainingConfig(local_epochs=5, fedprox_mu=mu),
            torch.Generator().manual_seed(0),
        )
        norms.append(np.linalg.norm(t.train_round(train, t.shared_weights()).update))
    assert norms[1] < 0.7 * norms[0]


def test_personal_layers_never_enter_the_shared_vector() -> None:
    model = build_model("mlp", 30, 2, hidden=(8,), seed=0)
    layout = ParameterLayout.of(model, personal_prefixes=("2.",))  # the output layer
    assert layout.names == ("0.weight", "0.bias") and layout.size == 30 * 8 + 8
    train, _ = standardised_breast_cancer()
    trainer = LocalTrainer(
        model, TrainingConfig(personal_prefixes=("2.",)), torch.Generator().manual_seed(0)
    )
    before_head = model[2].weight.detach().clone()
    trainer.train_round(train, trainer.shared_weights())
    assert not torch.equal(before_head, model[2].weight)  # trained locally...
    trainer.load_shared(np.zeros(layout.size, dtype=np.float32))
    assert not torch.equal(
        model[2].weight, torch.zeros_like(model[2].weight)
    )  # ...never overwritten
    with pytest.raises(DataError, match="nothing would be shared"):
        ParameterLayout.of(model, personal_prefixes=("",))


def test_layout_rejects_bad_vectors() -> None:
    layout = ParameterLayout.of(build_model("logistic", 3, 2))
    model = build_model("logistic", 3, 2)
    with pytest.raises(DataError, match="expected \\(8,\\)"):
        layout.load_flat(model, np.zeros(7, dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        layout.load_flat(model, np.full(8, np.nan, dtype=np.float32))


def test_nan_features_refused() -> None:
    d = Dataset(np.array([[np.nan, 1.0]], dtype=np.float32), np.array([0]), ("a", "b"))
    t = LocalTrainer(build_model("logistic", 2, 2), TrainingConfig())
    with pytest.raises(DataError, match="NaN"):
        t.train_round(d, t.shared_weights())


def test_checkpoint_round_trip_and_corruption(tmp_path: Path) -> None:
    train, _ = standardised_breast_cancer()
    t = LocalTrainer(
        build_model("mlp", 30, 2, seed=1),
        TrainingConfig(optimizer="adam", learning_rate=0.01),
        torch.Generator().manual_seed(2),
    )
    t.train_round(train, t.shared_weights())
    ckpt = tmp_path / "model.ckpt"
    t.save_checkpoint(ckpt, 7, {"epsilon": 0.5})
    assert ckpt.stat().st_mode & 0o777 == 0o600
    u = LocalTrainer(
        build_model("mlp", 30, 2, seed=9), TrainingConfig(optimizer="adam", learning_rate=0.01)
    )
    assert u.load_checkpoint(ckpt) == (7, {"epsilon": 0.5})
    np.testing.assert_array_equal(u.shared_weights(), t.shared_weights())
    # The same next step after a restore: optimizer and shuffling state came back too.
    np.testing.assert_array_equal(
        t.train_round(train, t.shared_weights()).update,
        u.train_round(train, u.shared_weights()).update,
    )
    raw = bytearray(ckpt.read_bytes())
    raw[-10] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="corrupted"):
        u.load_checkpoint(ckpt)
    other = LocalTrainer(build_model("logistic", 30, 2), TrainingConfig())
    t.save_checkpoint(ckpt, 8, {})
    with pytest.raises(IntegrityError, match="different model"):
        other.load_checkpoint(ckpt)


def test_config_and_model_errors() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainingConfig(learning_rate=0)
    with pytest.raises(ConfigError, match="optimizer"):
        TrainingConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="neither a built-in"):
        build_model("transformer", 3, 2)
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_model("no_such_module:make", 3, 2)
    m = build_model("tests.helpers_models:tiny", 3, 2)
    assert sum(p.numel() for p in m.parameters()) == 3 * 2 + 2


def test_parquet_loading_and_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from p2pfed.training import load_table

    p = tmp_path / "site.parquet"
    pq.write_table(pa.table({"age": [50.0, None], "bp": [120, 130], "label": [1, 0]}), p)
    d = load_table(p, "label")
    assert d.feature_names == ("age", "bp") and np.isnan(d.x[1, 0]) and d.y.tolist() == [1, 0]
    pq.write_table(pa.table({"age": ["old", "young"], "label": [1, 0]}), p)
    with pytest.raises(DataError, match="column 'age' holds string"):
        load_table(p, "label")
    pq.write_table(pa.table({"age": [1.0], "label": [0.5]}), p)
    with pytest.raises(DataError, match="non-negative integer classes"):
        load_table(p, "label")
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_table(p, "label")
    with pytest.raises(DataError, match="no such data file"):
        load_table(tmp_path / "gone.parquet", "label")


def test_fixed_local_steps() -> None:
    train, _ = standardised_breast_cancer()
    t = LocalTrainer(
        build_model("logistic", 30, 2),
        TrainingConfig(local_steps=7, batch_size=8),
        torch.Generator(),
    )
    assert t.train_round(train, t.shared_weights()).steps == 7
