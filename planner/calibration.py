"""Learned correction of the cost model: actual ~= a * prefill + b * decode + c * overhead estimate.

The roofline misses what this machine's software adds (Python, attention kernels below
their peak, other processes on the cores), and misses it by different factors for the
prefill, decode and per-step overhead parts of a query, so each past query is one equation
in three unknowns. The fit minimizes the relative error. Queries rarely tell all three
apart (a run of one workload is one equation), so each factor is pulled gently towards a
prior: the overall ratio actual / estimate, or the factors fitted over all of a model's
weight paths. A factor the data does not pin down stays at its prior, and one kind of
query alone gets the overall ratio on every part.

A call shorter than MIN_SECONDS teaches nothing: its time is mostly what a first run pays once and noise. (The
peers benchmark's warm-up, four short prompts on a new connection, ran 2.8x its estimate and that one observation
priced the 64-prompt W1 after it at 2.4x its actual time.)

>>> [round(f, 1) for f in fit_cost_factors([(10.0, 0.0, 0.0, 20.0), (0.0, 5.0, 0.0, 50.0), (0.0, 0.0, 1.0, 3.0)])]
[2.0, 9.9, 3.0]
>>> [round(f, 2) for f in fit_cost_factors([(10.0, 0.0, 0.0, 20.0), (20.0, 0.0, 0.0, 40.0)])]
[2.0, 2.0, 2.0]
>>> fit_cost_factors([])
(1.0, 1.0, 1.0)
>>> fit_cost_factors([(0.03, 0.02, 0.01, 0.17)])  # 0.17 s at 2.8x its estimate: no lesson
(1.0, 1.0, 1.0)

Given a prior (another weight path's factors on this machine), what the data leaves open stays there:

>>> [round(f, 2) for f in fit_cost_factors([(10.0, 0.0, 0.0, 20.0)], prior=(1.5, 3.0, 2.5))]
[2.0, 3.0, 2.5]
"""
from __future__ import annotations

import statistics

import numpy as np

LIMITS = (0.05, 100.0)  # a factor outside this is a broken observation, not a calibration
MIN_SECONDS = 0.25  # measured seconds below which a query says nothing about speed
PRIOR_WEIGHT = 1e-3  # how strongly a factor keeps the overall ratio: its relative deviation, squared, at this weight


def _clip(x: float) -> float:
    return min(LIMITS[1], max(LIMITS[0], x))


def fit_cost_factors(observations: list[tuple[float, float, float, float]],
                     prior: tuple[float, float, float] | None = None) -> tuple[float, float, float]:
    """observations: (prefill, decode, overhead estimate, actual) seconds -> (prefill, decode, overhead) factors.

    prior: where each factor stays when the observations do not pin it down (default: the overall ratio)."""
    obs = [o for o in observations if o[3] >= MIN_SECONDS and sum(o[:3]) > 0]
    if not obs:
        return prior or (1.0, 1.0, 1.0)
    if prior is None:
        prior = (_clip(statistics.median([y / (p + d + o) for p, d, o, y in obs])),) * 3
    # rows of the relative-error system, then the prior rows sqrt(w) * (factor / prior - 1) = 0
    x = np.array([[p / y, d / y, o / y] for p, d, o, y in obs])
    rows = np.vstack([x, np.sqrt(PRIOR_WEIGHT) * np.diag([1 / f for f in prior])])
    target = np.concatenate([np.ones(len(obs)), np.full(3, np.sqrt(PRIOR_WEIGHT))])
    factors, *_ = np.linalg.lstsq(rows, target, rcond=None)
    a, b, c = (_clip(float(f)) for f in factors)
    return a, b, c
