"""Logical plan nodes: what to compute, not how.

Nodes are frozen dataclasses; a rewrite builds a new node with `dataclasses.replace`.
Each has a `name` and `params()` (ordered (key, value) pairs) that EXPLAIN renders;
nodes never format themselves. Scalar expressions are sqlglot ASTs whose columns
name the plan's internal columns ("alias.column" for scanned columns, "__llm_N"
for model outputs).

`columns(inputs)` gives a node's output columns from its inputs' (in input order).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from catalog.sources import TableSource
from operators.requests import SamplingParams


@dataclass(frozen=True)
class SqlText:
    """A param's SQL text as literal pieces and expressions; EXPLAIN renders the expressions in sqlm's
    dialect (the planner owns the dialect, so nodes never format expressions themselves)."""
    parts: tuple[str | exp.Expr, ...]

    def render(self, to_sql) -> str:
        """to_sql: exp.Expr -> str."""
        return "".join(p if isinstance(p, str) else to_sql(p) for p in self.parts)


def sql(*parts: str | exp.Expr | SqlText) -> SqlText:
    """SqlText of the pieces in order (a SqlText's own pieces spliced in)."""
    return SqlText(tuple(q for p in parts for q in (p.parts if isinstance(p, SqlText) else (p,))))


def sql_join(separator: str, items) -> SqlText:
    """SqlText of items (pieces or SqlTexts) with `separator` between them."""
    pieces = []
    for i, item in enumerate(items):
        pieces += [separator, item] if i else [item]
    return sql(*pieces)


def is_plan_column(c: exp.Column) -> bool:
    """A column of the plan (bound: quoted internal name, no qualifier), not one of a subquery's own tables."""
    if c.find_ancestor(exp.Select) is None:
        return True
    return (not c.table and isinstance(c.this, exp.Identifier) and c.this.quoted
            and ("." in c.name or c.name.startswith("__")))


def referenced_columns(e: exp.Expr) -> set[str]:
    """The plan's columns `e` reads (inside its subqueries: the correlated references)."""
    return {c.name for c in e.find_all(exp.Column) if is_plan_column(c)}


@dataclass(frozen=True)
class Relational:
    """A whole query without model calls, run as it is by the relational engine (DuckDB)."""
    query: str  # in DuckDB's SQL
    output: tuple[str, ...]  # its columns
    reads: tuple[str, ...]  # the catalog tables it reads, as registered
    rows: float  # estimated result rows
    engine_plan: str = ""  # DuckDB's operator tree, one line
    name = "Relational"

    def columns(self, inputs):
        return self.output

    def params(self):
        return [("query", self.query), ("reads", ", ".join(self.reads) or "(no table)")]


@dataclass(frozen=True)
class Scan:
    source: TableSource
    alias: str
    read: tuple[str, ...]  # source columns to read; projection pruning narrows this
    name = "Scan"

    def columns(self, inputs: list[tuple[str, ...]]) -> tuple[str, ...]:
        prefix = f"{self.alias}." if self.alias else ""
        return tuple(prefix + c for c in self.read)

    def params(self) -> list[tuple[str, object]]:
        return [("source", f"{self.source.kind}:{self.source.location}"), ("alias", self.alias),
                ("columns", ", ".join(self.read))]


@dataclass(frozen=True)
class Filter:
    predicates: tuple[exp.Expr, ...]  # conjuncts, evaluated in this order
    name = "Filter"

    def columns(self, inputs):
        return inputs[0]

    def params(self):
        return [("predicate", sql_join(" AND ", self.predicates))]


@dataclass(frozen=True)
class Project:
    outputs: tuple[tuple[str, exp.Expr], ...]  # (output column, expression over the input)
    name = "Project"

    @property
    def has_window(self) -> bool:
        """A window function sees every input row: no filter or LIMIT may pass below it."""
        return any(e.find(exp.Window) for _, e in self.outputs)

    @staticmethod
    def makes_rows(e: exp.Expr) -> bool:
        """An output with unnest() turns one row into many: no LIMIT may pass below it, a filter on it cannot be
        rewritten below (its column exists only above), and it stays even when unread (counts above would change)."""
        return e.find(exp.Explode, exp.Unnest) is not None

    def columns(self, inputs):
        return tuple(n for n, _ in self.outputs)

    def params(self):
        return [("columns", sql_join(", ", (n if isinstance(e, exp.Column) and e.name == n else sql(e, f" AS {n}")
                                            for n, e in self.outputs)))]


@dataclass(frozen=True)
class SetOp:
    """UNION / INTERSECT / EXCEPT of two inputs with the same columns, by position."""
    kind: str  # 'UNION' | 'INTERSECT' | 'EXCEPT'
    distinct: bool  # False: the ALL form, duplicates kept
    name = "SetOp"

    def columns(self, inputs):
        return inputs[0]

    def params(self):
        return [("operation", self.kind + ("" if self.distinct else " ALL"))]


@dataclass(frozen=True)
class LLMOptions:
    """What the optimizer decided about one model call (rules fill these in)."""
    dedup: bool = False  # compute each distinct (prompt, params) once
    order: str = "arrival"  # 'arrival' | 'prefix' (rows sharing a prompt prefix run together)


@dataclass(frozen=True)
class Generate:
    """Adds column `output`: the model's text for each row's prompt."""
    model: str
    prompt: exp.Expr
    sampling: SamplingParams
    chat: bool
    output: str
    options: LLMOptions = LLMOptions()
    priority: int = 0  # the engine's request priority: lower runs first (vLLM's convention)
    n: int = 1  # samples per row: n > 1 makes the output a list of n texts (the prompt is computed once)
    name = "Generate"

    @property
    def deterministic(self) -> bool:
        """Same prompt, same text: greedy, or sampled with a fixed seed."""
        return self.sampling.greedy or self.sampling.seed is not None

    def input_expressions(self) -> tuple[exp.Expr, ...]:
        return (self.prompt,)

    def columns(self, inputs):
        return inputs[0] + (self.output,)

    def params(self):
        s = self.sampling
        p = [("model", self.model), ("prompt", sql(self.prompt)), ("max_tokens", s.max_tokens),
             ("temperature", s.temperature)]
        if s.top_p != 1.0:
            p.append(("top_p", s.top_p))
        if s.top_k:
            p.append(("top_k", s.top_k))
        if s.seed is not None:
            p.append(("seed", s.seed))
        if s.stop:
            p.append(("stop", list(s.stop)))
        if s.structured is not None:
            p.append(("structured", s.structured.describe()))
        if s.beam_width > 1:
            p.append(("beam_width", s.beam_width))
        p += [("chat", self.chat), ("output", self.output), ("dedup", self.options.dedup),
              ("order", self.options.order)]
        return p + ([("priority", self.priority)] if self.priority else []) + ([("n", self.n)] if self.n > 1 else [])


@dataclass(frozen=True)
class Classify:
    """Adds column `output`: the label the model finds most likely for each row's text."""
    model: str
    text: exp.Expr
    labels: tuple[str, ...]
    instruction: str
    output: str
    options: LLMOptions = LLMOptions()
    priority: int = 0  # of its score requests: lower runs first
    name = "Classify"
    deterministic = True  # likelihood scoring has no sampling

    def input_expressions(self) -> tuple[exp.Expr, ...]:
        return (self.text,)

    def columns(self, inputs):
        return inputs[0] + (self.output,)

    def params(self):
        return [("model", self.model), ("text", sql(self.text)), ("labels", list(self.labels)),
                ("instruction", self.instruction), ("output", self.output),
                ("dedup", self.options.dedup), ("order", self.options.order)] + (
                    [("priority", self.priority)] if self.priority else [])


LLM_NODES = (Generate, Classify)


@dataclass(frozen=True)
class SortKey:
    expr: exp.Expr
    descending: bool = False
    nulls_first: bool = False


def sort_keys(keys) -> SqlText:
    return sql_join(", ", (sql(k.expr, " DESC" if k.descending else "") for k in keys))


def join_keys(left_keys, right_keys, none: str) -> SqlText:
    return sql_join(", ", (sql(a, " = ", b) for a, b in zip(left_keys, right_keys))) if left_keys else sql(none)


@dataclass(frozen=True)
class Sort:
    keys: tuple[SortKey, ...]
    name = "Sort"

    def columns(self, inputs):
        return inputs[0]

    def params(self):
        return [("keys", sort_keys(self.keys))]


@dataclass(frozen=True)
class Limit:
    count: int | None
    offset: int = 0
    name = "Limit"

    def columns(self, inputs):
        return inputs[0]

    def params(self):
        return [("count", self.count)] + ([("offset", self.offset)] if self.offset else [])


@dataclass(frozen=True)
class Join:
    kind: str  # 'inner' | 'left' | 'right' | 'full' | 'cross'
    left_keys: tuple[exp.Expr, ...]  # equi-join keys over the left input
    right_keys: tuple[exp.Expr, ...]
    residual: exp.Expr | None = None  # non-equi part of ON, applied after the join
    name = "Join"

    def columns(self, inputs):
        return inputs[0] + inputs[1]

    def params(self):
        p = [("type", self.kind), ("keys", join_keys(self.left_keys, self.right_keys, "(none)"))]
        if self.residual is not None:
            p.append(("residual", sql(self.residual)))
        return p


@dataclass(frozen=True)
class AggregateCall:
    call: exp.Expr  # the aggregate over the input's columns, e.g. string_agg("t.name", ',' ORDER BY "t.id")
    output: str

    @property
    def inputs(self) -> set[str]:
        return referenced_columns(self.call)


@dataclass(frozen=True)
class Aggregate:
    groups: tuple[str, ...]  # input columns
    aggregates: tuple[AggregateCall, ...]
    name = "Aggregate"

    def columns(self, inputs):
        return self.groups + tuple(a.output for a in self.aggregates)

    def params(self):
        aggs = sql_join(", ", (sql(a.call, f" AS {a.output}") for a in self.aggregates))
        return [("groups", ", ".join(self.groups) or "(all rows)"), ("aggregates", aggs)]
