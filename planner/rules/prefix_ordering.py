"""prefix_ordering: send a model call's rows to the engine sorted by prompt, so rows sharing
a prefix run together and the prefix cache serves it while it is still resident.

Decided by the cost model: fires when sorted order computes fewer prompt tokens than
arrival order under the KV budget (the prefix cache must be allowed).

>>> from planner.examples import chain, scan, classify, context
>>> bodies = [f"{w} item number {i} arrived late" for i in range(400) for w in ("Great", "Awful")]
>>> plan = chain(scan("t", body=bodies), classify('"t.body"'))
>>> ordered = prefix_ordering(plan, context(kv_cache_memory="64MB"))
>>> [ordered.op(n).options.order for n in ordered.walk() if ordered.op(n).name == "Classify"]
['prefix']
>>> off = prefix_ordering(plan, context(kv_cache_memory="64MB", prefix_cache="off"))
>>> [off.op(n).options.order for n in off.walk() if off.op(n).name == "Classify"]
['arrival']
"""
from __future__ import annotations

from dataclasses import replace

from operators import logical as L
from planner.choose import cost_of, initial_knobs, workload
from planner.context import OptimizerContext
from planner.estimate import column_stats, estimate_rows, prompt_profile
from planner.graph import Plan


def ordering_saving(op, profile, rows: float, ctx: OptimizerContext) -> tuple[float, float]:
    """(prompt tokens, seconds) that prefix order saves over arrival order."""
    facts = ctx.model(op.model)
    knobs = initial_knobs(ctx, facts)
    arrival = cost_of(workload(replace(op, options=replace(op.options, order="arrival")), profile, rows, ctx), knobs, facts, ctx)
    prefix = cost_of(workload(replace(op, options=replace(op.options, order="prefix")), profile, rows, ctx), knobs, facts, ctx)
    return arrival.computed_prompt_tokens - prefix.computed_prompt_tokens, arrival.seconds - prefix.seconds


def prefix_ordering(plan: Plan, ctx: OptimizerContext) -> Plan:
    plan = plan.copy()
    rows = estimate_rows(plan, ctx)
    stats = column_stats(plan, ctx)
    for node in plan.walk():
        op = plan.op(node)
        if not isinstance(op, L.LLM_NODES) or op.options.order == "prefix":
            continue
        if ctx.settings_for(op.model).prefix_cache == "off":
            continue
        input_rows = rows[plan.inputs(node)[0]]
        tokens, seconds = ordering_saving(op, prompt_profile(op, stats, ctx.model(op.model), input_rows), input_rows, ctx)
        if tokens > 0 and seconds > 0:
            plan.set_op(node, replace(op, options=replace(op.options, order="prefix")))
    return plan
