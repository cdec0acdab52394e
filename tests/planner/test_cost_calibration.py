"""planner.calibration: what past queries teach the cost model.

The numbers are W1's (64 prompts x 64 tokens, SmolLM2, Zen 4) and the peers benchmark's warm-up (4 prompts x
4 tokens on a new connection), which taught factors of 2.8 that priced W1 at 2.4x its time.
"""
import pytest

from planner.calibration import MIN_SECONDS, fit_cost_factors

WARM_UP = (0.023, 0.018, 0.007, 0.13)  # a new engine's first query: 2.7x its estimate, a tenth of a second
W1 = (1.446, 4.720, 0.325, 7.40)  # 1.14x its estimate over seven seconds


@pytest.mark.parametrize("observations,ratio", [
    ([WARM_UP], 1.0),  # first-run costs and noise: no lesson
    ([W1], 7.40 / sum(W1[:3])),
    ([WARM_UP, W1], 7.40 / sum(W1[:3])),  # the warm-up does not skew the long query's lesson
    ([(0.0, 2.0, 0.0, 1.0)] * 3, 0.5),  # faster than estimated: the same rules, below 1
])
def test_one_kind_of_query_gives_its_ratio_to_every_part(observations, ratio):
    assert fit_cost_factors(observations) == pytest.approx((ratio,) * 3, rel=0.01)


def test_a_query_just_long_enough_counts():
    assert fit_cost_factors([(0.1, 0.1, 0.0, MIN_SECONDS)]) == pytest.approx((MIN_SECONDS / 0.2,) * 3, rel=0.01)


def test_a_path_moves_from_its_prior_only_where_it_was_measured():
    prefill, decode, overhead = fit_cost_factors([(10.0, 0.0, 0.0, 20.0)], prior=(1.5, 3.0, 2.5))
    assert prefill == pytest.approx(2.0, rel=0.01) and (decode, overhead) == pytest.approx((3.0, 2.5), rel=0.01)


def test_no_observations_leave_the_prior():
    assert fit_cost_factors([]) == (1.0, 1.0, 1.0)
    assert fit_cost_factors([WARM_UP], prior=(2.0, 1.0, 1.0)) == (2.0, 1.0, 1.0)
