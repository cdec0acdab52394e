"""projection_pruning: read only the columns the query uses, and drop model calls nobody reads.

Required columns flow from the root down; a scan narrows to what is required above
it (keeping one column so its row count survives), projections drop unused outputs
(one that nobody reads, as under count(*), keeps a constant column, and unnest() stays:
it makes rows), and a model call whose output is never read is removed: it would cost
tokens for nothing. Each kept node tells its inputs every column it still reads.

>>> from planner.examples import chain, scan, generate, context, col
>>> from operators.logical import Project
>>> plan = chain(scan("t", id=[1], body=["a"], stars=[5]), generate('"t.body"'),
...              Project((("t.id", col("t.id")),)))
>>> pruned = projection_pruning(plan, context())
>>> print(pruned.describe())
Project
  Project
    Scan
>>> [pruned.op(n).read for n in pruned.walk() if pruned.op(n).name == "Scan"]
[('id',)]
"""
from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from operators import logical as L
from planner.context import OptimizerContext
from planner.graph import Plan


def _refs(*exprs) -> set[str]:
    return set().union(*(L.referenced_columns(e) for e in exprs)) if exprs else set()


def _row_only(op: L.Project) -> tuple:
    """What is left of a projection none of whose columns is read (e.g. under count(*)): one column that reads
    nothing, so the rows survive while model calls below it can go. It keeps its name (a join above still sees
    distinct names) but not its expression."""
    name, e = op.outputs[0]
    return ((name, e if not _refs(e) else exp.Literal.number(1)),)


def _needs_from_inputs(plan: Plan, node: int, required: set[str]) -> list[set[str]]:
    """For each input of `node`, the columns it must provide when `required` is needed above."""
    op = plan.op(node)
    inputs = plan.inputs(node)
    if isinstance(op, L.Project):  # already pruned: it reads what its kept outputs read
        return [_refs(*(e for _, e in op.outputs))]
    if isinstance(op, L.LLM_NODES):
        return [(required - {op.output}) | _refs(*op.input_expressions())]
    if isinstance(op, L.Filter):
        return [required | _refs(*op.predicates)]
    if isinstance(op, L.Sort):
        return [required | _refs(*(k.expr for k in op.keys))]
    if isinstance(op, L.Aggregate):
        return [set(op.groups).union(*(a.inputs for a in op.aggregates))]
    if isinstance(op, L.SetOp):  # by position: every column of both sides, or DISTINCT changes meaning
        return [set(plan.columns(i)) for i in inputs]
    if isinstance(op, L.Join):
        extra = _refs(*op.left_keys, *op.right_keys, *([op.residual] if op.residual is not None else []))
        return [(required | extra) & set(plan.columns(i)) for i in inputs]
    return [required for _ in inputs]


def projection_pruning(plan: Plan, ctx: OptimizerContext) -> Plan:
    plan = plan.copy()
    required: dict[int, set[str]] = {plan.root: set(plan.columns(plan.root))}
    for node in reversed(plan.walk()):  # root first
        if not plan.graph.has_node(node):
            continue
        op, need = plan.op(node), required.get(node, set())
        if isinstance(op, L.LLM_NODES) and op.output not in need:
            child = plan.inputs(node)[0]
            plan.remove(node)
            required[child] = required.get(child, set()) | need
            continue
        if isinstance(op, L.Project) and node != plan.root:
            kept = tuple((n, e) for n, e in op.outputs if n in need or L.Project.makes_rows(e)) or _row_only(op)
            if kept != op.outputs:
                plan.set_op(node, replace(op, outputs=kept))
        if isinstance(op, L.Scan):
            prefix = f"{op.alias}." if op.alias else ""
            read = tuple(c for c in op.read if prefix + c in need) or op.read[:1]
            if read != op.read:
                plan.set_op(node, replace(op, read=read))
            continue
        for child, child_need in zip(plan.inputs(node), _needs_from_inputs(plan, node, need)):
            required[child] = required.get(child, set()) | child_need
    return plan
