"""SQL -> logical plan -> optimized physical plan. The whole pipeline is `plan_query`."""
from __future__ import annotations

import catalog.threading_env  # noqa: F401  (before torch loads OpenMP)

from sqlglot import exp

from planner.bind import CatalogView, bind
from planner.context import OptimizerContext
from planner.lower import PhysicalPlan, lower
from planner.optimizer import optimize


def plan_query(select: exp.Expr, sql: str, catalog: CatalogView, make_context) -> PhysicalPlan:
    """make_context(logical_plan) -> OptimizerContext: the context needs the models the query names."""
    logical = bind(select, catalog, sql)
    ctx: OptimizerContext = make_context(logical)
    optimized, rules = optimize(logical, ctx)
    return lower(optimized, rules, ctx)
