"""predicate_pushdown: move each WHERE conjunct down as far as its columns allow, below model calls.

A conjunct passes a model call that does not produce a column it reads, a sort, a
one-to-one projection of plain columns, and into the side of an inner join that has
all its columns. It stops at scans, limits and aggregates.

>>> from planner.examples import chain, scan, generate, where, context
>>> plan = chain(scan("t", id=[1, 2], stars=[1, 5], body=["a", "b"]),
...              generate("\\"t.body\\""), where('"t.stars" <= 2'))
>>> print(predicate_pushdown(plan, context()).describe())
Project
  Generate
    Filter
      Scan
"""
from __future__ import annotations

from dataclasses import replace

from operators import logical as L
from planner.context import OptimizerContext
from planner.graph import Plan

_PASS_THROUGH = (L.Sort,)


def _can_pass(plan: Plan, node: int, refs: set[str]) -> int | None:
    """The input a conjunct reading `refs` can move into from just above `node`, or None."""
    op = plan.op(node)
    if isinstance(op, L.LLM_NODES):
        return None if op.output in refs else plan.inputs(node)[0]
    if isinstance(op, (L.Filter,) + _PASS_THROUGH):
        return plan.inputs(node)[0]
    if isinstance(op, L.Join):
        left, right = plan.inputs(node)
        if refs <= set(plan.columns(left)) and op.kind in ("inner", "left", "cross"):
            return left
        if refs <= set(plan.columns(right)) and op.kind in ("inner", "right", "cross"):
            return right
    return None


def predicate_pushdown(plan: Plan, ctx: OptimizerContext) -> Plan:
    plan = plan.copy()
    for node in reversed(plan.walk()):  # top-down, so a moved conjunct is not visited twice
        if not plan.graph.has_node(node) or not isinstance(plan.op(node), L.Filter):
            continue
        kept = []
        for conjunct in plan.op(node).predicates:
            refs = L.referenced_columns(conjunct)
            target, below = None, plan.inputs(node)[0]
            while (nxt := _can_pass(plan, below, refs)) is not None:
                target, below = below, nxt
            if target is None:
                kept.append(conjunct)
                continue
            # `below` is where the conjunct now sits on top of: join an existing Filter there, or add one
            if isinstance(plan.op(below), L.Filter):
                plan.set_op(below, replace(plan.op(below), predicates=plan.op(below).predicates + (conjunct,)))
            else:
                plan.insert_above(below, L.Filter((conjunct,)))
        if kept:
            plan.set_op(node, L.Filter(tuple(kept)))
        else:
            plan.remove(node)
    return plan
