"""Lowering: the optimized logical plan to the physical plan, every knob chosen and every estimate attached."""
from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from operators import logical as L
from operators import physical as P
from planner.choose import choose_knobs, cost_of, expected_output_tokens, template_key, workload
from planner.context import OptimizerContext
from planner.cost import relational_seconds
from planner.estimate import column_stats, estimate_rows, prompt_profile
from planner.graph import Plan
from planner.operator_kernels import operator_kernels
from planner.optimizer import RuleRun


@dataclass
class PhysicalPlan:
    plan: Plan  # a Plan whose nodes are operators/physical nodes
    rules: list[RuleRun]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.plan.output_names

    @property
    def estimated_seconds(self) -> float:
        return sum(self.plan.op(n).estimate.seconds for n in self.plan.walk())

    def llm_nodes(self) -> list[int]:
        return [n for n in self.plan.walk() if isinstance(self.plan.op(n), P.LLM_OPERATORS)]


def lower_llm(op: L.Generate | L.Classify, rows: float, stats, ctx: OptimizerContext):
    facts = ctx.model(op.model)
    profile = prompt_profile(op, stats, facts, rows)
    w = workload(op, profile, rows, ctx)
    knobs, choices = choose_knobs(op, w, ctx)
    cost = cost_of(w, knobs, facts, ctx)
    _, output_source = expected_output_tokens(op, ctx)
    # the rules' decisions, with what the alternative would have cost
    flip_dedup = replace(op, options=replace(op.options, dedup=not op.options.dedup))
    flip_order = replace(op, options=replace(op.options, order="arrival" if op.options.order == "prefix" else "prefix"))
    alt_dedup = cost_of(workload(flip_dedup, profile, rows, ctx), knobs, facts, ctx)
    alt_order = cost_of(workload(flip_order, profile, rows, ctx), knobs, facts, ctx)
    calls = w.requests / (len(op.labels) if isinstance(op, L.Classify) else 1)
    dedup_note = f"{rows:,.0f} rows -> {calls:,.0f} distinct prompts" if op.options.dedup else (
        "sampling without a seed: equal prompts may differ" if not op.deterministic else "prompts look distinct")
    saved = alt_order.computed_prompt_tokens - cost.computed_prompt_tokens
    order_note = (f"saves {saved:,.0f} prompt tokens ({alt_order.seconds - cost.seconds:.1f}s) over arrival order"
                  if op.options.order == "prefix" else "no saving from reordering")
    choices = [
        P.Choice("dedup", op.options.dedup, cost.seconds, not op.options.dedup, alt_dedup.seconds, note=dedup_note),
        P.Choice("order", op.options.order, cost.seconds, flip_order.options.order, alt_order.seconds, note=order_note),
        *choices,
        P.Choice("output_tokens", round(w.output_tokens, 1), cost.seconds, note=output_source),
    ]
    estimate = P.Estimate(rows=rows, seconds=cost.seconds, prompt_tokens=w.requests * w.prompt_tokens,
                          computed_prompt_tokens=cost.computed_prompt_tokens,
                          output_tokens=w.requests * w.output_tokens, kv_bytes=cost.kv_bytes, llm_calls=w.requests,
                          prefill_seconds=cost.prefill_seconds, decode_seconds=cost.decode_seconds,
                          overhead_seconds=cost.overhead_seconds)
    common = dict(model=op.model, output=op.output, options=op.options, knobs=knobs, template=template_key(op),
                  estimate=estimate, choices=tuple(choices),
                  operator_kernels=operator_kernels(knobs, cost, facts, ctx, choices))
    if isinstance(op, L.Generate):
        return P.BatchedGenerate(prompt=op.prompt, sampling=op.sampling, chat=op.chat, priority=op.priority, n=op.n,
                                 **common)
    return P.BatchedClassify(text=op.text, labels=op.labels, instruction=op.instruction, priority=op.priority, **common)


def lower(plan: Plan, rules: list[RuleRun], ctx: OptimizerContext) -> PhysicalPlan:
    rows = estimate_rows(plan, ctx)
    stats = column_stats(plan, ctx)
    graph = nx.DiGraph()
    fused: set[int] = set()  # Sort nodes folded into a TopN
    for node in plan.walk():
        op = plan.op(node)
        ins = plan.inputs(node)
        in_rows = rows[ins[0]] if ins else rows[node]
        width = len(plan.columns(node))
        base = P.Estimate(rows=rows[node], seconds=relational_seconds(in_rows, width, ctx.hardware))
        if isinstance(op, L.Relational):
            phys = P.Relational(op.query, op.reads, op.engine_plan, base)
        elif isinstance(op, L.Scan):
            phys = P.TableScan(op.source, op.alias, op.read, base)
        elif isinstance(op, L.Filter):
            phys = P.Filter(op.predicates, base)
        elif isinstance(op, L.Project):
            phys = P.Project(op.outputs, base)
        elif isinstance(op, L.LLM_NODES):
            phys = lower_llm(op, in_rows, stats, ctx)
        elif isinstance(op, L.Limit) and isinstance(plan.op(ins[0]), L.Sort) and op.count is not None:
            sort = plan.op(ins[0])
            phys = P.TopN(sort.keys, op.count, op.offset, base)
            fused.add(ins[0])
        elif isinstance(op, L.Sort):
            phys = P.Sort(op.keys, base)
        elif isinstance(op, L.Limit):
            phys = P.Limit(op.count, op.offset, base)
        elif isinstance(op, L.Join):
            phys = P.HashJoin(op.kind, op.left_keys, op.right_keys, op.residual, base)
        elif isinstance(op, L.Aggregate):
            phys = P.HashAggregate(op.groups, op.aggregates, base)
        elif isinstance(op, L.SetOp):
            phys = P.SetOp(op.kind, op.distinct, base)
        else:
            raise TypeError(f"no physical operator for {op.name}")
        graph.add_node(node, op=phys)
        for slot, child in enumerate(ins):
            graph.add_edge(child, node, slot=slot)
    physical = Plan(graph, plan.root, plan.output_names, plan.tables)
    for sort in fused:  # TopN replaced Sort + Limit
        physical.remove(sort)
    return PhysicalPlan(physical, rules)
