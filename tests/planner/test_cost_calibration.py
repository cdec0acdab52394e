"""planner.calibration: what past queries teach the cost model, weighted by the seconds they measured.

Each case: observations (prefill, decode, overhead estimate, actual seconds) -> the range each fitted factor
must land in. The numbers are W1's (64 prompts x 64 tokens, SmolLM2, Zen 4) and the peers benchmark's warm-up
(4 prompts x 4 tokens), which before the weighting taught factors of 2.8 that priced W1 at 2.4x its time.
"""
import pytest

from planner.calibration import fit_cost_factors

WARM_UP = (0.023, 0.018, 0.007, 0.13)  # a new engine's first query: 2.7x its estimate, a tenth of a second
W1 = (1.446, 4.720, 0.325, 7.40)  # 1.14x its estimate over seven seconds


@pytest.mark.parametrize("observations,low,high", [
    ([WARM_UP], 1.0, 1.25),  # a tenth of a second barely moves the factors
    ([W1], 1.05, 1.16),  # seven seconds nearly fit
    ([WARM_UP, W1], 1.05, 1.2),  # the long query decides
    ([W1] * 5, 1.12, 1.16),  # repeated evidence converges on the ratio
    ([(0.0, 2.0, 0.0, 1.0)] * 3, 0.5, 0.6),  # faster than estimated: the same rules, below 1
])
def test_factors_move_by_the_seconds_measured(observations, low, high):
    factors = fit_cost_factors(observations)
    assert all(low <= f <= high for f in factors), factors


def test_a_part_no_query_exercised_keeps_the_overall_ratio():
    prefill, decode, overhead = fit_cost_factors([(0.0, 5.0, 0.0, 10.0)] * 4)
    assert decode == pytest.approx(2.0, rel=0.02)
    assert prefill == pytest.approx(decode, rel=0.05) and overhead == pytest.approx(decode, rel=0.05)


def test_a_path_moves_from_its_prior_only_where_it_was_measured():
    prior = (1.5, 3.0, 2.5)
    prefill, decode, overhead = fit_cost_factors([(10.0, 0.0, 0.0, 20.0)], prior=prior)
    assert prefill == pytest.approx(2.0, rel=0.03) and (decode, overhead) == (3.0, 2.5)


def test_no_observations_leave_the_prior():
    assert fit_cost_factors([]) == (1.0, 1.0, 1.0)
    assert fit_cost_factors([], prior=(2.0, 1.0, 1.0)) == (2.0, 1.0, 1.0)
