"""prompt_dedup: compute each distinct (prompt, parameters) once and share the answer.

Safe only when equal prompts must give equal answers: greedy decoding, a fixed seed,
or classify's likelihood scoring. Fires when the statistics say prompts repeat.

>>> from planner.examples import chain, scan, generate, context
>>> plan = chain(scan("t", category=["a", "b", "a", "b", "a", "b"]), generate("'Describe ' || \\"t.category\\""))
>>> dedup = prompt_dedup(plan, context())
>>> [dedup.op(n).options.dedup for n in dedup.walk() if dedup.op(n).name == "Generate"]
[True]
>>> sampled = chain(scan("t", category=["a", "a"]), generate("\\"t.category\\"", temperature=0.8))
>>> [prompt_dedup(sampled, context()).op(n).options.dedup for n in sampled.walk() if sampled.op(n).name == "Generate"]
[False]
"""
from __future__ import annotations

from dataclasses import replace

from operators import logical as L
from planner.context import OptimizerContext
from planner.estimate import column_stats, estimate_rows, prompt_profile
from planner.graph import Plan

REPEAT_THRESHOLD = 1.0  # any expected repeat: hashing the prompts costs next to nothing beside one model call


def prompt_dedup(plan: Plan, ctx: OptimizerContext) -> Plan:
    plan = plan.copy()
    rows = estimate_rows(plan, ctx)
    stats = column_stats(plan, ctx)
    for node in plan.walk():
        op = plan.op(node)
        if not isinstance(op, L.LLM_NODES) or op.options.dedup or not op.deterministic:
            continue
        input_rows = rows[plan.inputs(node)[0]]
        profile = prompt_profile(op, stats, ctx.model(op.model), input_rows)
        if profile.distinct_fraction < REPEAT_THRESHOLD:
            plan.set_op(node, replace(op, options=replace(op.options, dedup=True)))
    return plan
