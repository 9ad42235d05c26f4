"""``p2pfed bench sim``'s end-to-end jobs: every phase of a short job, both sides, one run.

Runtime: two fresh processes importing torch, about 12 s idle and 40 s under load 10.
"""

from __future__ import annotations

import pytest

from p2pfed.bench.sim import jobs


@pytest.mark.slow
def test_a_job_is_timed_end_to_end_with_its_phases_for_both_sides() -> None:
    (case,) = jobs([8], 2)
    assert case["n"] == 8 and case["rounds"] == 2
    for side in ("vectorized", "loop"):
        job = case[side]
        phases = ("imports_s", "setup_s", "first_round_s", "later_rounds_s", "evaluation_s")
        assert job["total_s"] == pytest.approx(sum(job[p] for p in phases), abs=0.01)
        assert job["imports_s"] > 0 and job["setup_s"] > 0 and job["first_round_s"] > 0
        assert 0.5 < job["final_accuracy"] <= 1.0  # both sides trained a working model
    assert case["end_to_end_speedup"] == round(
        case["loop"]["total_s"] / case["vectorized"]["total_s"], 2
    )
