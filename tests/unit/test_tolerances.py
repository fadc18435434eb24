"""The engine tests' comparisons (zspa_selfcheck/compare.py, through tests/engine/harness.py): where a greedy token may
differ, that a NaN never passes, and that every sensitivity bound clears its equality
tolerance by SEPARATION."""

import math

import pytest

from tests.engine.harness import BFLOAT16, FLOAT32, SEPARATION, assert_same_answer, must_differ_by, step_logprobs


def record(*steps: dict[int, float]) -> dict:
    """A stock_reference-style record; each step's greedy token is its most likely one."""
    return {"token_ids": [max(s, key=s.get) for s in steps], "logprobs": [{str(t): lp for t, lp in s.items()} for s in steps]}


@pytest.mark.parametrize("tol", [FLOAT32, BFLOAT16], ids=["float32", "bfloat16"])
def test_sensitivity_bounds_clear_the_equality_tolerance(tol):
    assert must_differ_by(tol) >= SEPARATION * tol.schedule
    assert must_differ_by(tol) >= 1e-3


def test_a_near_tie_may_flip_within_the_tolerance_and_stops_the_comparison():
    a = record({1: -1.000, 2: -1.004, 3: -5.0}, {1: -2.0, 2: -3.0, 3: -4.0})
    b = record({1: -1.003, 2: -1.001, 3: -5.0}, {1: -9.0, 2: -0.1, 3: -4.0})  # step 2: another context
    assert b["token_ids"][0] == 2
    assert assert_same_answer(a, b, atol=1e-2, steps=2) == pytest.approx(0.003)


def test_a_flip_beyond_the_noise_fails():
    a = record({1: -1.0, 2: -1.5, 3: -5.0})
    b = record({1: -1.6, 2: -1.0, 3: -5.0})
    with pytest.raises(AssertionError, match="dlogprob"):
        assert_same_answer(a, b, atol=1e-2, steps=1)


def test_a_difference_beyond_the_tolerance_fails_without_a_flip():
    a = record({1: -1.0, 2: -2.0})
    b = record({1: -1.0, 2: -2.02})
    with pytest.raises(AssertionError, match="dlogprob"):
        assert_same_answer(a, b, atol=1e-2, steps=1)


def test_a_nan_never_passes():
    nan = record({1: -1.0, 2: math.nan})
    with pytest.raises(ValueError, match="NaN"):
        step_logprobs(nan)
    with pytest.raises(ValueError, match="NaN"):
        assert_same_answer(record({1: -1.0, 2: -2.0}), nan, atol=1e-2, steps=1)
