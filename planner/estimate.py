"""Cardinality and prompt-shape estimates over a logical plan, from the catalog's statistics.

Kept apart from the cost model (which turns these into seconds and bytes) and from
the choices (which compare costs).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from operators import logical as L
from planner.context import OptimizerContext
from planner.graph import Plan
from planner.range_selectivity import range_selectivity
from planner.statistics import ColumnStats

UNKNOWN_SELECTIVITY = 0.33  # textbook default for a predicate nothing is known about
LIKE_SELECTIVITY = 0.25
GENERATED_EQUALITY_SELECTIVITY = 0.1
UNKNOWN_CHARS = 12  # an expression whose text length no statistic describes


def column_stats(plan: Plan, ctx: OptimizerContext) -> dict[str, ColumnStats]:
    """Internal column name -> statistics of the source column it carries."""
    out: dict[str, ColumnStats] = {}
    for node in plan.walk():
        op = plan.op(node)
        if isinstance(op, L.Scan):
            stats = ctx.statistics.columns(op.source)
            for c in op.read:
                if c in stats:
                    out[f"{op.alias}.{c}" if op.alias else c] = stats[c]
        elif isinstance(op, L.Project):
            for name, e in op.outputs:
                if isinstance(e, exp.Column) and e.name in out:
                    out[name] = out[e.name]
    return out


def selectivity(pred: exp.Expr, stats: dict[str, ColumnStats], llm_ops: dict[str, L.Generate | L.Classify]) -> float:
    if isinstance(pred, exp.Paren):
        return selectivity(pred.this, stats, llm_ops)
    if isinstance(pred, exp.And):
        return selectivity(pred.this, stats, llm_ops) * selectivity(pred.expression, stats, llm_ops)
    if isinstance(pred, exp.Or):
        a, b = selectivity(pred.this, stats, llm_ops), selectivity(pred.expression, stats, llm_ops)
        return a + b - a * b
    if isinstance(pred, exp.Not):
        return 1.0 - selectivity(pred.this, stats, llm_ops)
    cols = [c.name for c in pred.find_all(exp.Column)]
    if isinstance(pred, (exp.EQ, exp.In)):
        k = len(pred.expressions) if isinstance(pred, exp.In) else 1
        for c in cols:
            if c in llm_ops:
                op = llm_ops[c]
                return min(1.0, k / len(op.labels)) if isinstance(op, L.Classify) else GENERATED_EQUALITY_SELECTIVITY
            if c in stats and stats[c].distinct:
                return min(1.0, k / stats[c].distinct)
        return UNKNOWN_SELECTIVITY
    if isinstance(pred, exp.NEQ):
        return 1.0 - selectivity(exp.EQ(this=pred.this, expression=pred.expression), stats, llm_ops)
    if isinstance(pred, exp.Is):
        c = cols[0] if cols else None
        return stats[c].nulls / max(1, stats[c].rows) if c in stats else 0.05
    if isinstance(pred, (exp.Like, exp.ILike)):
        return LIKE_SELECTIVITY
    ranged = range_selectivity(pred, stats)
    return UNKNOWN_SELECTIVITY if ranged is None else ranged


def estimate_rows(plan: Plan, ctx: OptimizerContext) -> dict[int, float]:
    stats = column_stats(plan, ctx)
    llm_ops = {plan.op(n).output: plan.op(n) for n in plan.walk() if isinstance(plan.op(n), L.LLM_NODES)}
    rows: dict[int, float] = {}
    for node in plan.walk():
        op, ins = plan.op(node), [rows[i] for i in plan.inputs(node)]
        if isinstance(op, L.Relational):
            rows[node] = op.rows
        elif isinstance(op, L.Scan):
            rows[node] = float(op.source.row_count if op.source.row_count is not None else 1000)
        elif isinstance(op, L.Filter):
            s = 1.0
            for p in op.predicates:
                s *= selectivity(p, stats, llm_ops)
            rows[node] = ins[0] * s
        elif isinstance(op, L.Limit):
            rows[node] = max(0.0, min(ins[0] - op.offset, op.count if op.count is not None else ins[0]))
        elif isinstance(op, L.Aggregate):
            groups = 1.0
            for g in op.groups:
                groups *= stats[g].distinct if g in stats else max(1.0, ins[0] ** 0.5)
            rows[node] = min(ins[0], groups) if op.groups else 1.0
        elif isinstance(op, L.SetOp):
            rows[node] = {"UNION": ins[0] + ins[1], "INTERSECT": min(ins)}.get(op.kind, ins[0])
        elif isinstance(op, L.Join):
            if op.kind == "cross":
                rows[node] = ins[0] * ins[1]
            else:
                ndv = [stats[k.name].distinct for k in op.left_keys + op.right_keys
                       if isinstance(k, exp.Column) and k.name in stats]
                if not op.left_keys:  # a join on a condition without an equality: a filtered cross product
                    rows[node] = ins[0] * ins[1] * UNKNOWN_SELECTIVITY
                else:
                    rows[node] = ins[0] * ins[1] / max(ndv) if ndv else max(ins)
        else:
            rows[node] = ins[0]
    return rows


@dataclass(frozen=True)
class PromptProfile:
    """The shape of one model call's prompts, in tokens (chat template included)."""
    tokens: float  # mean prompt tokens per row
    static_prefix_tokens: float  # identical in every row (template head, instruction, leading literals)
    sorted_shared_tokens: float  # mean prefix a row shares with its neighbour once rows are sorted by prompt
    distinct_fraction: float  # distinct prompts / rows


def _parts(e: exp.Expr) -> list[exp.Expr]:
    """'a' || col || 'b' -> ['a', col, 'b'] (|| is left-associative)."""
    if isinstance(e, exp.DPipe):
        return _parts(e.this) + _parts(e.expression)
    if isinstance(e, exp.Paren):
        return _parts(e.this)
    return [e]


def _chars(part: exp.Expr, stats: dict[str, ColumnStats]) -> float:
    if isinstance(part, exp.Literal):
        return float(len(part.this))
    if isinstance(part, exp.Column) and part.name in stats:
        return stats[part.name].avg_chars
    return float(UNKNOWN_CHARS)


def prompt_profile(op: L.Generate | L.Classify, stats: dict[str, ColumnStats], facts, rows: float) -> PromptProfile:
    parts = _parts(op.prompt if isinstance(op, L.Generate) else op.text)
    if isinstance(op, L.Classify):
        parts = [exp.Literal.string(op.instruction + "\n\n")] + parts
    chat = isinstance(op, L.Classify) or op.chat
    head = facts.chat_prefix_tokens if chat else 0
    tail = facts.chat_suffix_tokens if chat else 0
    tpc = facts.tokens_per_char
    total_chars = sum(_chars(p, stats) for p in parts)
    static = 0.0
    for p in parts:
        if not isinstance(p, exp.Literal):
            break
        static += len(p.this)
    # sorted neighbours share the static prefix, then the first variable part's common prefix;
    # when that part is equal for neighbours (a low-cardinality column), sharing continues past it
    shared, carry = static, 1.0
    index = next((i for i, p in enumerate(parts) if not isinstance(p, exp.Literal)), len(parts))
    for p in parts[index:]:
        if isinstance(p, exp.Literal):
            shared += carry * len(p.this)
            continue
        s = stats.get(p.name) if isinstance(p, exp.Column) else None
        if s is None:
            break
        equal = s.adjacent_equal_fraction
        shared += carry * ((1 - equal) * s.sorted_lcp_chars + equal * s.avg_chars)
        carry *= equal
        if carry < 0.01:
            break
    referenced = [p.name for p in parts if isinstance(p, exp.Column)]
    distinct = 1.0
    for name in referenced:
        distinct *= stats[name].distinct if name in stats else rows
    distinct = min(rows, distinct) if referenced else 1.0
    return PromptProfile(
        tokens=head + tail + total_chars * tpc,
        static_prefix_tokens=head + static * tpc,
        sorted_shared_tokens=head + min(shared, total_chars) * tpc,
        distinct_fraction=(distinct / rows) if rows else 1.0,
    )
