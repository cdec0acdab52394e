"""Learned correction of the roofline: actual ~= a * prefill_estimate + b * decode_estimate.

The roofline misses what this machine's software adds (Python per step, attention
gathers, other processes); prefill and decode miss it by different factors, so each
past query is one equation and the two factors are fitted by least squares on the
relative error. With one kind of query only (all prefill, or all decode), one factor
is fitted and applied to both phases.

>>> [round(f, 6) for f in fit_phase_factors([(10.0, 0.0, 20.0), (0.0, 5.0, 50.0)])]
[2.0, 10.0]
>>> fit_phase_factors([(10.0, 0.0, 20.0), (20.0, 0.0, 40.0)])
(2.0, 2.0)
>>> fit_phase_factors([])
(1.0, 1.0)
"""
from __future__ import annotations

import statistics

LIMITS = (0.05, 100.0)  # a factor outside this is a broken observation, not a calibration


def _clip(x: float) -> float:
    return min(LIMITS[1], max(LIMITS[0], x))


def fit_phase_factors(observations: list[tuple[float, float, float]]) -> tuple[float, float]:
    """observations: (prefill estimate, decode estimate, actual) seconds -> (prefill factor, decode factor)."""
    obs = [(p, d, y) for p, d, y in observations if y > 0 and p + d > 0]
    if not obs:
        return 1.0, 1.0
    # weighted normal equations of min sum ((a p + b d - y) / y)^2
    spp = sum((p / y) ** 2 for p, d, y in obs)
    sdd = sum((d / y) ** 2 for p, d, y in obs)
    spd = sum(p * d / y**2 for p, d, y in obs)
    sp = sum(p / y for p, d, y in obs)
    sd = sum(d / y for p, d, y in obs)
    det = spp * sdd - spd * spd
    if det > 1e-9 * max(spp * sdd, 1e-30):
        a, b = (sp * sdd - sd * spd) / det, (sd * spp - sp * spd) / det
        if a > 0 and b > 0:
            return _clip(a), _clip(b)
    ratio = statistics.median([y / (p + d) for p, d, y in obs])
    return _clip(ratio), _clip(ratio)
