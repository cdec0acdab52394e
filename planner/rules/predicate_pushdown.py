"""predicate_pushdown: move each WHERE conjunct down as far as its columns allow, below model calls.

A conjunct passes a model call that does not produce a column it reads, a sort, a
projection (rewritten over the projection's inputs, so a filter on a subquery's or a CTE's
column reaches below the model calls inside it), and into the side of an inner join that
has all its columns. It stops at scans, limits and aggregates, and at a projection whose
expressions it reads are not deterministic or unnest().

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

from sqlglot import exp

from operators import logical as L
from planner.context import OptimizerContext
from planner.graph import Plan

_PASS_THROUGH = (L.Sort,)
_VOLATILE = (exp.Rand,)


def _through_project(op: L.Project, conjunct: exp.Expr) -> exp.Expr | None:
    """The conjunct over the projection's inputs: each column it reads replaced by its expression."""
    if op.has_window:
        return None
    outputs = dict(op.outputs)
    used = [outputs[c] for c in L.referenced_columns(conjunct) if c in outputs]
    if any(e.find(*_VOLATILE) or L.Project.makes_rows(e) for e in used):
        return None

    def swap(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and L.is_plan_column(node) and node.name in outputs:
            return outputs[node.name].copy()
        return node
    return conjunct.copy().transform(swap, copy=False)


def _can_pass(plan: Plan, node: int, conjunct: exp.Expr) -> tuple[int, exp.Expr] | None:
    """(the input a conjunct can move into from just above `node`, the conjunct there), or None."""
    op = plan.op(node)
    refs = L.referenced_columns(conjunct)
    if isinstance(op, L.LLM_NODES):
        return None if op.output in refs else (plan.inputs(node)[0], conjunct)
    if isinstance(op, (L.Filter,) + _PASS_THROUGH):
        return plan.inputs(node)[0], conjunct
    if isinstance(op, L.Project):
        rewritten = _through_project(op, conjunct)
        return None if rewritten is None else (plan.inputs(node)[0], rewritten)
    if isinstance(op, L.Join):
        left, right = plan.inputs(node)
        if refs <= set(plan.columns(left)) and op.kind in ("inner", "left", "cross"):
            return left, conjunct
        if refs <= set(plan.columns(right)) and op.kind in ("inner", "right", "cross"):
            return right, conjunct
    return None


def predicate_pushdown(plan: Plan, ctx: OptimizerContext) -> Plan:
    plan = plan.copy()
    for node in reversed(plan.walk()):  # top-down, so a moved conjunct is not visited twice
        if not plan.graph.has_node(node) or not isinstance(plan.op(node), L.Filter):
            continue
        kept = []
        for conjunct in plan.op(node).predicates:
            target, below, moved = None, plan.inputs(node)[0], conjunct
            while (step := _can_pass(plan, below, moved)) is not None:
                target, (below, moved) = below, step
            if target is None:
                kept.append(conjunct)
                continue
            # `below` is where the conjunct now sits on top of: join an existing Filter there, or add one
            if isinstance(plan.op(below), L.Filter):
                plan.set_op(below, replace(plan.op(below), predicates=plan.op(below).predicates + (moved,)))
            else:
                plan.insert_above(below, L.Filter((moved,)))
        if kept:
            plan.set_op(node, L.Filter(tuple(kept)))
        else:
            plan.remove(node)
    return plan
