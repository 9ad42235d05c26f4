"""Attacks on the distributed discrete Gaussian, run through real secure-aggregation peers.

(a) An insider that removes its own share (and, worst case, knows every input) from the
revealed sum still faces the planned noise σ·S. (b) The noise reaches the sum whole: no
coordinate of any peer's noise is clipped. (c) Production noise comes from the ChaCha20
CSPRNG, freshly keyed per sampler.
"""

from __future__ import annotations

import numpy as np

from p2pfed.privacy.ddg import DiscreteGaussianEncoder, plan_ddg
from p2pfed.privacy.sampling import ChaChaSource, SecureGaussian
from p2pfed.secagg.harness import Drop, run_cohort
from p2pfed.secagg.params import SecAggConfig, guaranteed_contributors
from p2pfed.secagg.state import Stage

D = 100_000
Z, S = 1.0, 2.0


def _unit_updates(n: int, d: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        x = rng.normal(size=d)
        out.append(x / np.linalg.norm(x) * S)
    return out


def test_insider_sees_at_least_the_planned_noise_after_removing_its_own_share() -> None:
    # n = 4, one member drops: the smallest completed sum (m = 3, the secagg floor) with c = 1.
    m = guaranteed_contributors(4)
    assert m == 3
    plan = plan_ddg(
        n_peers=4, min_contributors=m, collusion=1, dimension=D, clip_norm=S, noise_multiplier=Z
    )
    names = ["a", "b", "c", "v"]
    updates = dict(zip(names, _unit_updates(4, D), strict=True))
    encoders = {
        p: DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(i)) for i, p in enumerate(names)
    }
    parts = {p: encoders[p].encode_parts(updates[p]) for p in names}
    config = SecAggConfig("ddg-attack", 1, D, ring_bits=plan.ring_bits)
    run = run_cohort(
        config,
        {p: parts[p][2] for p in names},
        drops={"v": Drop(Stage.MASKED_INPUT)},
        random_seed=3,
    )
    assert run.survivors == frozenset({"a", "b", "c"})
    # The attacker a: the revealed sum minus its own words, minus b's and c's rounded inputs
    # (known to the worst-case attacker); what is left is the others' noise alone.
    revealed = encoders["a"].centred(run.results["a"])
    known = parts["a"][0] + parts["a"][1] + parts["b"][0] + parts["c"][0]
    residual = (revealed - known) * plan.gamma
    # The estimate of a std from 1e5 draws has relative standard error 1/√(2·1e5) = 0.22 %;
    # the planned floor is z·S and insider calibration gives z·Δ₂·γ ≥ z·S.
    assert residual.std() >= 0.99 * Z * S
    assert abs(residual.mean()) < 5 * residual.std() / np.sqrt(D)


def test_no_noise_coordinate_is_clipped_on_its_way_into_the_sum() -> None:
    plan = plan_ddg(
        n_peers=4, min_contributors=3, collusion=1, dimension=D, clip_norm=S, noise_multiplier=Z
    )
    names = ["p0", "p1", "p2", "p3"]
    updates = dict(zip(names, _unit_updates(4, D), strict=True))
    encoders = {
        p: DiscreteGaussianEncoder(plan, ChaChaSource.from_seed(10 + i))
        for i, p in enumerate(names)
    }
    parts = {p: encoders[p].encode_parts(updates[p]) for p in names}
    clipped = sum(
        int(np.count_nonzero(encoders[p].centred(parts[p][2]) != parts[p][0] + parts[p][1]))
        for p in names
    )
    assert clipped == 0
    config = SecAggConfig("ddg-clip", 1, D, ring_bits=plan.ring_bits, min_survivors=3)
    run = run_cohort(config, {p: parts[p][2] for p in names}, random_seed=4)
    total = encoders["p0"].centred(run.results["p0"])
    noise = sum(parts[p][1] for p in names)
    signal = sum(parts[p][0] for p in names)
    assert np.array_equal(total - signal, noise)  # the whole noise, no wrap, no clip


def test_production_noise_comes_from_a_freshly_keyed_chacha_stream() -> None:
    plan = plan_ddg(
        n_peers=3, min_contributors=2, collusion=1, dimension=64, clip_norm=S, noise_multiplier=Z
    )
    first, second = DiscreteGaussianEncoder(plan), DiscreteGaussianEncoder(plan)
    assert isinstance(first.source, ChaChaSource) and isinstance(second.source, ChaChaSource)
    assert not np.array_equal(first.noise(64), second.noise(64))
    a, b = SecureGaussian(), SecureGaussian()
    assert isinstance(a.source, ChaChaSource)
    assert not np.array_equal(a.source.uint64(4), b.source.uint64(4))


def test_a_nodes_local_noise_comes_from_chacha_not_numpy(tmp_path) -> None:
    from p2pfed.privacy import NoiseMode, PrivacyLedger
    from p2pfed.privacy.release import PrivateReleaser

    with (
        PrivacyLedger(tmp_path / "l", 100.0, 1e-5) as la,
        PrivacyLedger(tmp_path / "m", 100.0, 1e-5) as lb,
    ):
        a = PrivateReleaser(la, clip_norm=1.0, noise_multiplier=1.0, mode=NoiseMode.LOCAL)
        b = PrivateReleaser(lb, clip_norm=1.0, noise_multiplier=1.0, mode=NoiseMode.LOCAL)
        assert isinstance(a._rng, SecureGaussian) and isinstance(a._rng.source, ChaChaSource)
        zero = np.zeros(1000, dtype=np.float64)
        # Two nodes releasing the same update draw independent noise.
        assert not np.array_equal(a.release(0, zero), b.release(0, zero))


def test_dp_sgd_noise_on_a_node_comes_from_chacha_not_torch() -> None:
    import torch

    from p2pfed.training import LocalTrainer, TrainingConfig, build_model, load_builtin
    from p2pfed.training.trainer import DPSGD

    data = load_builtin("breast_cancer")
    data = type(data)(
        (data.x - data.x.mean(0)) / (data.x.std(0) + 1e-6), data.y, data.feature_names, data.name
    )

    def update() -> tuple[np.ndarray, object]:
        t = LocalTrainer(
            build_model("logistic", 30, 2, seed=0),
            TrainingConfig(local_steps=2, learning_rate=0.1),
            torch.Generator().manual_seed(0),  # same batches for both: only noise may differ
            dp_sgd=DPSGD(0.05, 1.0, 1.0),
        )
        return t.train_round(data, t.shared_weights()).update, t.noise_generator

    (a, source), (b, _) = update(), update()
    assert isinstance(source, SecureGaussian) and isinstance(source.source, ChaChaSource)
    assert not np.array_equal(a, b)  # independent noise from independently keyed streams


def test_dp_sgd_step_noise_from_secure_gaussian_has_sigma_c() -> None:
    import torch

    from p2pfed.privacy.dpsgd import dp_sgd_step

    model = torch.nn.Linear(500, 200, bias=False)
    empty = (torch.zeros(0, 500), torch.zeros(0, dtype=torch.long))
    dp_sgd_step(
        model,
        torch.nn.functional.cross_entropy,
        empty,
        clip_norm=2.0,
        noise_multiplier=1.5,
        generator=SecureGaussian(ChaChaSource.from_seed(8)),
        expected_batch_size=1.0,
    )
    grad = model.weight.grad.detach().numpy().astype(np.float64)
    # 10^5 draws: the std estimate's relative standard error is 0.22 %; 5 of them.
    assert abs(grad.std() / 3.0 - 1) < 5 / np.sqrt(2 * grad.size)
