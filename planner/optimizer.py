"""Runs the RULES pipeline: skip a disabled rule, time each, verify the plan after it."""
from __future__ import annotations

import time
from dataclasses import dataclass

from operators import logical as L
from planner.context import OptimizerContext
from planner.graph import Plan
from planner.rules import RULE_NAMES, RULES


class PlanInvariantError(AssertionError):
    """A rule broke the plan: a column read that nothing below provides, or a changed result schema."""


@dataclass(frozen=True)
class RuleRun:
    name: str
    status: str  # 'fired' | 'unchanged' | 'disabled'
    seconds: float


def same_plan(a: Plan, b: Plan) -> bool:
    """Equal operators wired the same way, whatever the node ids (compared, not printed: this runs
    twice per rule on every plan, an online request's included)."""
    def same(x: int, y: int) -> bool:
        xs, ys = a.inputs(x), b.inputs(y)
        return a.op(x) == b.op(y) and len(xs) == len(ys) and all(same(i, j) for i, j in zip(xs, ys))
    return a.output_names == b.output_names and same(a.root, b.root)


def verify(plan: Plan, before: Plan) -> None:
    columns: dict[int, tuple[str, ...]] = {}
    for n in plan.walk():  # inputs first, so each node's columns are computed once
        columns[n] = plan.op(n).columns([columns[i] for i in plan.inputs(n)])
    if columns[plan.root] != before.columns(before.root):
        raise PlanInvariantError("the result columns changed")
    for n in plan.walk():
        op = plan.op(n)
        available = set().union(*(columns[i] for i in plan.inputs(n))) if plan.inputs(n) else set()
        exprs, names = [], set()
        if isinstance(op, L.Filter):
            exprs = list(op.predicates)
        elif isinstance(op, L.Project):
            exprs = [e for _, e in op.outputs]
        elif isinstance(op, L.LLM_NODES):
            exprs = list(op.input_expressions())
        elif isinstance(op, L.Sort):
            exprs = [k.expr for k in op.keys]
        elif isinstance(op, L.Join):
            exprs = [*op.left_keys, *op.right_keys, *([op.residual] if op.residual is not None else [])]
        elif isinstance(op, L.Aggregate):
            names = set(op.groups).union(*(a.inputs for a in op.aggregates))
        missing = names.union(*(L.referenced_columns(e) for e in exprs)) - available
        if missing:
            raise PlanInvariantError(f"{op.name} reads {sorted(missing)} which its input does not provide")


def check_rule_names(names) -> None:
    unknown = set(names) - set(RULE_NAMES)
    if unknown:
        raise ValueError(f"unknown rule {sorted(unknown)[0]!r} in disabled_rules; rules: {', '.join(RULE_NAMES)}")


def optimize(plan: Plan, ctx: OptimizerContext) -> tuple[Plan, list[RuleRun]]:
    disabled = set(ctx.settings.disabled_rules)
    check_rule_names(disabled)
    runs = []
    for rule in RULES:
        if rule.__name__ in disabled:
            runs.append(RuleRun(rule.__name__, "disabled", 0.0))
            continue
        t0 = time.perf_counter()
        after = rule(plan, ctx)
        seconds = time.perf_counter() - t0
        verify(after, plan)
        runs.append(RuleRun(rule.__name__, "unchanged" if same_plan(after, plan) else "fired", seconds))
        plan = after
    return plan, runs
