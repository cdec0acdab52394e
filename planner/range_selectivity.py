"""Selectivity of a range predicate (<, <=, >, >=, BETWEEN) from a column's min and max.

Values are taken as spread evenly over [min, max]; an integer column holds the
max - min + 1 integers in between. Nulls match no range. None when the predicate
is not a column against a number, or the column has no min/max: the caller then
falls back to its constant.

>>> from planner.statistics import ColumnStats
>>> stars = ColumnStats(rows=100, distinct=5, nulls=0, avg_chars=1, sorted_lcp_chars=0, min=1, max=5)
>>> from sqlglot import parse_one
>>> range_selectivity(parse_one("stars <= 2"), {"stars": stars})
0.4
>>> range_selectivity(parse_one("3 < stars"), {"stars": stars})
0.4
>>> range_selectivity(parse_one("stars BETWEEN 2 AND 4"), {"stars": stars})
0.6
>>> range_selectivity(parse_one("stars > 9"), {"stars": stars})
0.0
>>> range_selectivity(parse_one("body < 'm'"), {"stars": stars}) is None
True
"""
from __future__ import annotations

import math

from sqlglot import exp

from planner.statistics import ColumnStats

_FLIPPED = {exp.LT: exp.GT, exp.LTE: exp.GTE, exp.GT: exp.LT, exp.GTE: exp.LTE}


def _number(e: exp.Expr) -> float | None:
    if isinstance(e, exp.Neg):
        inner = _number(e.this)
        return None if inner is None else -inner
    if isinstance(e, exp.Paren):
        return _number(e.this)
    return float(e.this) if isinstance(e, exp.Literal) and e.is_number else None


def _fraction_below(s: ColumnStats, value: float, inclusive: bool) -> float:
    """Share of the column's values < value (<= when inclusive)."""
    if isinstance(s.min, int) and isinstance(s.max, int):
        count = (math.floor(value) - s.min + 1) if inclusive else (math.ceil(value) - s.min)
        return min(1.0, max(0.0, count / (s.max - s.min + 1)))
    if s.max == s.min:
        return float(value > s.min or (inclusive and value == s.min))
    return min(1.0, max(0.0, (value - s.min) / (s.max - s.min)))


def _column_stats(e: exp.Expr, stats: dict[str, ColumnStats]) -> ColumnStats | None:
    s = stats.get(e.name) if isinstance(e, exp.Column) else None
    return s if s is not None and s.min is not None and s.max is not None else None


def range_selectivity(pred: exp.Expr, stats: dict[str, ColumnStats]) -> float | None:
    if isinstance(pred, exp.Between):
        s, low, high = _column_stats(pred.this, stats), _number(pred.args["low"]), _number(pred.args["high"])
        if s is None or low is None or high is None:
            return None
        share = max(0.0, _fraction_below(s, high, True) - _fraction_below(s, low, False))
    elif type(pred) in _FLIPPED:
        kind, column, value = type(pred), pred.this, _number(pred.expression)
        if not isinstance(column, exp.Column):  # 3 < x reads x > 3
            kind, column, value = _FLIPPED[kind], pred.expression, _number(pred.this)
        s = _column_stats(column, stats)
        if s is None or value is None:
            return None
        below = _fraction_below(s, value, inclusive=kind in (exp.LTE, exp.GT))
        share = below if kind in (exp.LT, exp.LTE) else 1.0 - below
    else:
        return None
    return round(share * (1.0 - s.nulls / max(1, s.rows)), 12)
