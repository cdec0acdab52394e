"""cheap_predicates_first: run model calls that feed predicates first, cheapest-per-rejected-row first,
and model calls the predicates do not need only on the rows that survive them.

Within a run of model calls and filters, each filter conjunct is placed right after
the last call it reads; calls that feed predicates are ordered by
rank = cost per row / (1 - selectivity) (the classic predicate-ordering rank), and
calls feeding only the output go last.

>>> from planner.examples import chain, scan, generate, classify, where, context
>>> plan = chain(scan("t", body=["a", "b"]),
...              generate('"t.body"', output="__llm_0"),               # only for the output
...              classify('"t.body"', output="__llm_1"),
...              where("\\"__llm_1\\" = 'negative'"))
>>> print(cheap_predicates_first(plan, context()).describe())
Project
  Generate
    Filter
      Classify
        Scan
"""
from __future__ import annotations

from operators import logical as L
from planner.context import OptimizerContext
from planner.estimate import column_stats, prompt_profile, selectivity
from planner.graph import Plan


def _runs(plan: Plan) -> list[list[int]]:
    """Maximal bottom-up chains of model calls and filters that hold at least one model call."""
    runs, seen = [], set()
    for node in plan.walk():
        if node in seen or not isinstance(plan.op(node), (L.Filter,) + L.LLM_NODES):
            continue
        run = [node]
        while (up := plan.consumer(run[-1])) is not None and isinstance(plan.op(up), (L.Filter,) + L.LLM_NODES):
            run.append(up)
        seen.update(run)
        if any(isinstance(plan.op(n), L.LLM_NODES) for n in run):
            runs.append(run)
    return runs


def _cost_per_row(op, stats, ctx: OptimizerContext) -> float:
    """Tokens the engine processes per row; a decoded token costs about a batch step of prefill tokens."""
    profile = prompt_profile(op, stats, ctx.model(op.model), rows=1.0)
    if isinstance(op, L.Classify):
        return profile.tokens + 4 * len(op.labels)
    return profile.tokens + 20 * op.sampling.max_tokens


def cheap_predicates_first(plan: Plan, ctx: OptimizerContext) -> Plan:
    plan = plan.copy()
    stats = column_stats(plan, ctx)
    for run in _runs(plan):
        calls = [plan.op(n) for n in run if isinstance(plan.op(n), L.LLM_NODES)]
        conjuncts = [p for n in run if isinstance(plan.op(n), L.Filter) for p in plan.op(n).predicates]
        outputs = {c.output: c for c in calls}
        needs = {id(p): L.referenced_columns(p) & set(outputs) for p in conjuncts}
        feeding = {o for p in conjuncts for o in needs[id(p)]}

        def rank(call) -> float:
            sel = 1.0
            for p in conjuncts:
                if needs[id(p)] == {call.output}:
                    sel *= selectivity(p, stats, outputs)
            return _cost_per_row(call, stats, ctx) / max(1e-6, 1.0 - sel)

        def depends(a, b) -> bool:  # a's prompt reads b's output
            return any(b.output in L.referenced_columns(e) for e in a.input_expressions())

        pending = sorted([c for c in calls if c.output in feeding], key=rank) + \
            [c for c in calls if c.output not in feeding]
        order = []
        while pending:  # stable topological pick: a call never runs before a call it reads
            pick = next(c for c in pending if not any(depends(c, d) for d in pending if d is not c))
            pending.remove(pick)
            order.append(pick)
        new_ops, placed, available = [], set(), set()
        cheap = [p for p in conjuncts if not needs[id(p)]]
        if cheap:
            new_ops.append(L.Filter(tuple(cheap)))
            placed.update(id(p) for p in cheap)
        for call in order:
            new_ops.append(call)
            available.add(call.output)
            ready = [p for p in conjuncts if id(p) not in placed and needs[id(p)] <= available]
            if ready:
                new_ops.append(L.Filter(tuple(ready)))
                placed.update(id(p) for p in ready)
        old_ops = [plan.op(n) for n in run]
        if [(o.name, getattr(o, "output", None), getattr(o, "predicates", None)) for o in new_ops] == \
                [(o.name, getattr(o, "output", None), getattr(o, "predicates", None)) for o in old_ops]:
            continue
        below = plan.inputs(run[0])[0]
        for n in run:
            plan.remove(n)
        for op in new_ops:
            below = plan.insert_above(below, op)
    return plan
