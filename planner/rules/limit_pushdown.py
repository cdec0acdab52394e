"""limit_pushdown: generate only the rows that will be returned.

A LIMIT moves below model calls it can see through (calls and projections are one
row in, one row out, but for a projection with unnest()). An ORDER BY under the LIMIT
moves down with it when its keys read no model output. Nothing moves past a filter,
an aggregate or a join: those change which rows survive.

>>> from planner.examples import chain, scan, generate, context
>>> from operators.logical import Limit
>>> plan = chain(scan("t", body=["a", "b", "c"]), generate('"t.body"'), Limit(1))
>>> print(limit_pushdown(plan, context()).describe())
Project
  Generate
    Limit
      Scan
"""
from __future__ import annotations

from operators import logical as L
from planner.context import OptimizerContext
from planner.graph import Plan


def _lowest_passable(plan: Plan, start: int, sort_keys_refs: set[str] | None) -> int | None:
    """The lowest model call reachable from `start` downwards through one-to-one nodes."""
    node, lowest = start, None
    while True:
        op = plan.op(node)
        if isinstance(op, L.LLM_NODES):
            if sort_keys_refs is not None and op.output in sort_keys_refs:
                return lowest
            lowest = node
        elif not (isinstance(op, L.Project) and not op.has_window and not any(L.Project.makes_rows(e) for _, e in op.outputs) and sort_keys_refs is None):
            return lowest
        node = plan.inputs(node)[0]


def limit_pushdown(plan: Plan, ctx: OptimizerContext) -> Plan:
    plan = plan.copy()
    for node in list(plan.walk()):
        op = plan.op(node)
        if not isinstance(op, L.Limit):
            continue
        below = plan.inputs(node)[0]
        sort = below if isinstance(plan.op(below), L.Sort) else None
        refs = set().union(*(L.referenced_columns(k.expr) for k in plan.op(sort).keys)) if sort is not None else None
        target = _lowest_passable(plan, plan.inputs(sort)[0] if sort is not None else below, refs)
        if target is None:
            continue
        moved = [plan.op(sort)] if sort is not None else []
        for n in ([sort] if sort is not None else []) + [node]:
            plan.remove(n)
        under = plan.inputs(target)[0]
        for m in moved + [op]:  # the Sort (if any) first, the Limit on top of it
            under = plan.insert_above(under, m)
    return plan
