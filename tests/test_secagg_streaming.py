"""The harness's streaming sum: one running total instead of n masked vectors, shared."""

import numpy as np

from p2pfed.secagg import Drop, SecAggConfig, Stage, run_cohort


def test_a_streamed_shared_sum_unmasks_exactly_at_every_survivor_with_a_drop():
    n, d = 6, 257
    rng = np.random.default_rng(3)
    inputs = {f"p{i}": rng.integers(0, 1 << 20, d, dtype=np.uint32) for i in range(n)}
    made: list[str] = []

    def lazy(name):
        def draw():
            made.append(name)
            return inputs[name].copy()

        return draw

    run = run_cohort(
        SecAggConfig("c", 1, d),
        {p: lazy(p) for p in inputs},
        drops={"p4": Drop(Stage.MASKED_INPUT)},
        random_seed=1,
        stream_sum=True,
        copy_inputs=False,
    )
    survivors = set(inputs) - {"p4"}
    assert run.survivors == survivors
    expected = sum(inputs[p].astype(np.uint64) for p in survivors).astype(np.uint32)
    # Every survivor unmasks from the one shared total: if result() wrote into it, the
    # second survivor would get a wrong sum.
    assert len(run.results) == len(survivors)
    for result in run.results.values():
        assert np.array_equal(result, expected)
    assert sorted(made) == sorted(inputs)  # each input made once, when masked
    assert all(run.peers[p].masked_vector is None for p in survivors)  # all in the total


def test_stream_sum_refuses_a_summation_of_its_own():
    import pytest

    from p2pfed.errors import ConfigError
    from p2pfed.secagg import DirectMaskedSum

    inputs = {f"p{i}": np.zeros(4, np.uint32) for i in range(3)}
    with pytest.raises(ConfigError, match="stream_sum"):
        run_cohort(SecAggConfig("c", 1, 4), inputs, stream_sum=True, masked_sum=DirectMaskedSum())
