"""Learned correction of the cost model: actual ~= a * prefill + b * decode + c * overhead estimate.

The roofline misses what this machine's software adds (Python, attention kernels below
their peak, other processes on the cores), and misses it by different factors for the
prefill, decode and per-step overhead parts of a query, so each past query is one equation
in three unknowns, weighted by the seconds it measured. Each factor starts from a base: for
a model's common fit, the overall ratio actual / estimate of its queries; for one weight path,
the common fit. A least-squares fit of the relative errors then moves each factor away from
its base only as far as the measured seconds outweigh EVIDENCE_SECONDS of pull towards it, so
queries rarely tell the three apart (a run of one workload is one equation) and a factor the
data does not pin down stays at its base: one kind of query alone gets the overall ratio on
every part.

A short query says little about a long one: its time is mostly what a first run pays once (kernels
loaded, steps captured, KV pages first touched) and noise. So the overall ratio, too, moves from 1
(the cost model's own figure) by a share seconds / (seconds + EVIDENCE_SECONDS) in log scale, and
so do the factors: a 0.17 s warm-up query that ran 2.8x its estimate sets them to ~1.2, not 2.8 (it
made a 64-prompt query's estimate 2.4x its actual time).

>>> [round(f, 1) for f in fit_cost_factors([(10.0, 0.0, 0.0, 20.0), (0.0, 5.0, 0.0, 50.0), (0.0, 0.0, 1.0, 3.0)])]
[2.0, 9.8, 3.2]
>>> [round(f, 2) for f in fit_cost_factors([(10.0, 0.0, 0.0, 20.0), (20.0, 0.0, 0.0, 40.0)])]
[2.0, 1.98, 1.98]
>>> [round(f, 2) for f in fit_cost_factors([(0.03, 0.02, 0.01, 0.17)])]  # 0.17 s at 2.8x its estimate
[1.19, 1.18, 1.17]
>>> fit_cost_factors([])
(1.0, 1.0, 1.0)

Given a prior (another weight path's factors on this machine), what the data leaves open stays there:

>>> [round(f, 2) for f in fit_cost_factors([(10.0, 0.0, 0.0, 20.0)], prior=(1.5, 3.0, 2.5))]
[1.96, 3.0, 2.5]
"""
from __future__ import annotations

import math

import numpy as np

LIMITS = (0.05, 100.0)  # a factor outside this is a broken observation, not a calibration
EVIDENCE_SECONDS = 1.0  # measured seconds that weigh as much as a factor's base


def _clip(x: float) -> float:
    return min(LIMITS[1], max(LIMITS[0], x))


def fit_cost_factors(observations: list[tuple[float, float, float, float]],
                     prior: tuple[float, float, float] | None = None) -> tuple[float, float, float]:
    """observations: (prefill, decode, overhead estimate, actual) seconds -> (prefill, decode, overhead) factors.

    prior: where each factor stays when the observations do not pin it down (default: the overall ratio)."""
    obs = [o for o in observations if o[3] > 0 and sum(o[:3]) > 0]
    if not obs:
        return prior or (1.0, 1.0, 1.0)
    actual = np.array([o[3] for o in obs])
    if prior is None:
        ratios = np.log(actual / np.array([sum(o[:3]) for o in obs]))
        prior = (_clip(math.exp(float(actual @ ratios) / (actual.sum() + EVIDENCE_SECONDS))),) * 3
    # rows sqrt(seconds) * (estimate . factor / actual - 1) = 0 in the factors' deviation from the base,
    # then the base rows sqrt(EVIDENCE_SECONDS) * (factor / base - 1) = 0
    x = np.array([[e * f / y for e, f in zip(o[:3], prior)] for o, y in zip(obs, actual)])
    rows = np.vstack([np.sqrt(actual)[:, None] * x, math.sqrt(EVIDENCE_SECONDS) * np.eye(3)])
    target = np.concatenate([np.sqrt(actual), np.full(3, math.sqrt(EVIDENCE_SECONDS))])
    relative, *_ = np.linalg.lstsq(rows, target, rcond=None)
    return tuple(_clip(float(f * r)) for f, r in zip(prior, relative))
