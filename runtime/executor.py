"""Runs a physical plan: relational operators in DuckDB, model calls batched through the engine.

Each relational operator is one DuckDB query over its inputs, registered as Arrow
relations (`__in0`, `__in1`), so NULLs, types and casts follow DuckDB; the catalog
tables the plan's subqueries read are registered under their own names. A
model-calling operator hands all of its rows to the engine at once (one continuous
batch), after deduplicating identical prompts and ordering them by prefix when the
plan says so, and puts the answers back in row order. `stream` runs a chain of row-wise
operators over one scan a partition at a time (COPY of a source larger than memory).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from operators import physical as P
from runtime.llm_ops import LLMOutcome, LLMService, merged
from runtime.relational import RelationalSession

_JOINS = {"inner": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL JOIN", "cross": "CROSS JOIN"}


@dataclass
class Actuals:
    """What one operator really did (EXPLAIN ANALYZE prints these beside the estimates)."""
    rows: int = 0
    seconds: float = 0.0  # this operator alone, inputs excluded
    llm: LLMOutcome | None = None
    distinct_inputs: int | None = None  # prompts sent to the engine after dedup


ProgressCallback = Callable[[int, int, int], None]  # (rows done, rows total, tokens generated)
ROW_WISE = frozenset({"Filter", "Project", "BatchedGenerate", "BatchedClassify"})


def streamable_chain(plan) -> list[int] | None:
    """The nodes from the root down to the one table scan when every operator above it is row-wise (an output row
    comes from one input row: filters, projections without windows or subqueries, model calls), so partitions of
    the scan can run one after another; None otherwise."""
    if getattr(plan, "tables", ()):
        return None  # subqueries over catalog tables
    chain, node = [], plan.root
    while True:
        chain.append(node)
        op, inputs = plan.op(node), plan.inputs(node)
        if isinstance(op, P.TableScan):
            return chain
        if op.name not in ROW_WISE or len(inputs) != 1:
            return None
        expressions = [e for _, e in op.outputs] if isinstance(op, P.Project) else \
            list(op.predicates) if isinstance(op, P.Filter) else []
        if any(e.find(exp.Window, exp.Subquery, exp.AggFunc) for e in expressions):
            return None
        node = inputs[0]


def duck(e: exp.Expr) -> str:
    return e.sql(dialect="duckdb")


def ident(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect="duckdb")


class Executor:
    def __init__(self, llm: LLMService, on_progress: ProgressCallback | None = None, threads: int | None = None) -> None:
        self.llm = llm
        self.on_progress = on_progress
        self.threads = threads

    def run(self, plan) -> tuple[pa.Table, dict[int, Actuals]]:
        """plan: anything with root, inputs(node), op(node) and tables (the catalog tables its subqueries
        read, by name), e.g. planner.graph.Plan of physical nodes."""
        actuals: dict[int, Actuals] = {}
        self.scans = 0  # each TableScan registers its source under a name of its own
        scans = [plan.op(n).source for n in plan.walk() if isinstance(plan.op(n), P.TableScan)]
        with RelationalSession(self.threads, [s for _, s in getattr(plan, "tables", ())] + scans) as self.db:
            for name, source in getattr(plan, "tables", ()):
                self.db.register(name, source)
            table = self._run(plan, plan.root, actuals)
        return table, actuals

    def stream(self, plan, chain: list[int], partition_rows: int):
        """The plan's result a partition at a time, for a plan that is row-wise operators over one table scan
        (`streamable_chain`): the scan is read `partition_rows` rows at a time and each partition runs through the
        operators above it, so a source larger than memory passes through. Each model call runs a partition's rows
        as one continuous batch (dedup and prefix order within it). self.actuals sums the partitions; progress
        counts the prompts of all partitions through the top model call, out of its estimated rows."""
        self.actuals: dict[int, Actuals] = {node: Actuals() for node in chain}
        scan = plan.op(chain[-1])
        counted = next((n for n in chain if plan.op(n).name in ("BatchedGenerate", "BatchedClassify")), chain[0])
        expected = int(plan.op(counted).estimate.rows)
        progress, done, tokens = self.on_progress, 0, 0
        if progress is not None:
            def partition_progress(rows: int, total: int, generated: int) -> None:
                progress(done + rows, max(expected, done + total), tokens + generated)
            self.on_progress = partition_progress
        try:
            with RelationalSession(self.threads, [scan.source]) as reader, reader.side() as self.db:
                self.scans = 0
                for part in reader.stream(self._scan_sql(scan, reader), partition_rows):
                    table = self._record(self.actuals[chain[-1]], part, 0.0)
                    for node in reversed(chain[:-1]):
                        op, t0, record = plan.op(node), time.perf_counter(), Actuals()
                        table = getattr(self, f"_{op.name}")(op, [table], record)
                        self._record(self.actuals[node], table, time.perf_counter() - t0, record)
                    done = self.actuals[counted].distinct_inputs or self.actuals[counted].rows  # a model call counts prompts
                    tokens = sum(self.actuals[n].llm.num_generated_tokens for n in chain if self.actuals[n].llm)
                    yield table
            if progress is not None:
                progress(done, done, tokens)  # the estimate of rows was only that: the bar ends full
        finally:
            self.on_progress = progress

    @staticmethod
    def _record(total: Actuals, table: pa.Table, seconds: float, part: Actuals | None = None) -> pa.Table:
        total.rows += table.num_rows
        total.seconds += seconds
        if part is not None and part.llm is not None:
            total.llm = part.llm if total.llm is None else merged(total.llm, part.llm)
            total.distinct_inputs = (total.distinct_inputs or 0) + (part.distinct_inputs or 0)
        return table

    def _run(self, plan, node: int, actuals: dict[int, Actuals]) -> pa.Table:
        inputs = [self._run(plan, child, actuals) for child in plan.inputs(node)]
        op = plan.op(node)
        t0 = time.perf_counter()
        record = Actuals()
        out = getattr(self, f"_{op.name}")(op, inputs, record)
        record.rows, record.seconds = out.num_rows, time.perf_counter() - t0
        actuals[node] = record
        return out

    def _sql(self, inputs: list[pa.Table], sql: str) -> pa.Table:
        for i, table in enumerate(inputs):
            self.db.register(f"__in{i}", table)
        return self.db.query(sql)

    # -- relational ---------------------------------------------------------------------
    def _Relational(self, op: P.Relational, inputs, record) -> pa.Table:
        return self.db.query(op.query)

    def _TableScan(self, op: P.TableScan, inputs, record) -> pa.Table:
        return self.db.query(self._scan_sql(op, self.db))

    def _scan_sql(self, op: P.TableScan, db: RelationalSession) -> str:
        """Registers the scan's source in `db` under a name of its own; the query that reads its columns."""
        self.scans += 1
        name = f"__scan_{self.scans}"
        db.register(name, op.source)
        prefix = f"{op.alias}." if op.alias else ""
        columns = ", ".join(f"{ident(c)} AS {ident(prefix + c)}" for c in op.read)
        return f"SELECT {columns or '1 AS __row'} FROM {name}"

    def _Filter(self, op: P.Filter, inputs, record) -> pa.Table:
        return self._sql(inputs, f"SELECT * FROM __in0 WHERE {' AND '.join(f'({duck(p)})' for p in op.predicates)}")

    def _Project(self, op: P.Project, inputs, record) -> pa.Table:
        if not op.outputs:
            return inputs[0].select([])
        columns = ", ".join(f"{duck(e)} AS {ident(name)}" for name, e in op.outputs)
        return self._sql(inputs, f"SELECT {columns} FROM __in0")

    @staticmethod
    def _order_by(keys) -> str:
        return ", ".join(f"{duck(k.expr)} {'DESC' if k.descending else 'ASC'} NULLS {'FIRST' if k.nulls_first else 'LAST'}"
                         for k in keys)

    @staticmethod
    def _limit(count: int | None, offset: int) -> str:
        return (f" LIMIT {count}" if count is not None else "") + (f" OFFSET {offset}" if offset else "")

    def _Sort(self, op: P.Sort, inputs, record) -> pa.Table:
        return self._sql(inputs, f"SELECT * FROM __in0 ORDER BY {self._order_by(op.keys)}")

    def _TopN(self, op: P.TopN, inputs, record) -> pa.Table:
        return self._sql(inputs, f"SELECT * FROM __in0 ORDER BY {self._order_by(op.keys)}{self._limit(op.count, op.offset)}")

    def _Limit(self, op: P.Limit, inputs, record) -> pa.Table:
        return self._sql(inputs, f"SELECT * FROM __in0{self._limit(op.count, op.offset)}")

    def _HashJoin(self, op: P.HashJoin, inputs, record) -> pa.Table:
        conditions = [f"{duck(a)} = {duck(b)}" for a, b in zip(op.left_keys, op.right_keys)]
        if op.residual is not None:  # part of ON: for an outer join it decides matches, it filters nothing
            conditions.append(f"({duck(op.residual)})")
        on = f" ON {' AND '.join(conditions)}" if conditions and op.kind != "cross" else ""
        return self._sql(inputs, f"SELECT * FROM __in0 {_JOINS[op.kind]} __in1{on}")

    def _SetOp(self, op: P.SetOp, inputs, record) -> pa.Table:
        return self._sql(inputs, f"SELECT * FROM __in0 {op.kind}{'' if op.distinct else ' ALL'} SELECT * FROM __in1")

    def _HashAggregate(self, op: P.HashAggregate, inputs, record) -> pa.Table:
        groups = [ident(g) for g in op.groups]
        aggs = [f"{duck(a.call)} AS {ident(a.output)}" for a in op.aggregates]
        group_by = f" GROUP BY {', '.join(groups)}" if groups else ""
        return self._sql(inputs, f"SELECT {', '.join(groups + aggs) or 'count(*) AS __n'} FROM __in0{group_by}")

    # -- model calls --------------------------------------------------------------------
    def _BatchedGenerate(self, op: P.BatchedGenerate, inputs, record) -> pa.Table:
        def run(prompts: list[str]) -> LLMOutcome:
            return self.llm.generate(op.model, op.knobs, prompts, op.sampling, op.chat, self.on_progress, op.priority,
                                     op.n)
        kind = pa.string() if op.n == 1 else pa.list_(pa.string())
        return self._llm_column(inputs[0], op.prompt, op.output, op.options, run, record, kind)

    def _BatchedClassify(self, op: P.BatchedClassify, inputs, record) -> pa.Table:
        def run(texts: list[str]) -> LLMOutcome:
            return self.llm.classify(op.model, op.knobs, texts, op.labels, op.instruction, self.on_progress, op.priority)
        return self._llm_column(inputs[0], op.text, op.output, op.options, run, record)

    def _llm_column(self, table: pa.Table, expr, output: str, options, run, record: Actuals,
                    kind: pa.DataType = pa.string()) -> pa.Table:
        texts = self._sql([table], f"SELECT {duck(expr)} AS text FROM __in0").column(0).combine_chunks()
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            texts = pc.cast(texts, pa.string())
        valid = pc.is_valid(texts)  # NULL text gives NULL, and costs no model call
        present = texts.filter(valid)
        if options.dedup:
            distinct = pc.unique(present)
            slot = pc.index_in(present, value_set=distinct)  # each present row -> its distinct prompt
        else:
            distinct, slot = present, pa.array(range(len(present)), pa.int64())
        submit = pc.sort_indices(distinct) if options.order == "prefix" else pa.array(range(len(distinct)), pa.int64())
        ordered = distinct.take(submit).to_pylist()
        outcome = run(ordered) if ordered else LLMOutcome(values=[])
        record.llm, record.distinct_inputs = outcome, len(distinct)
        column = pa.nulls(table.num_rows, kind)
        if ordered:
            # outcome i answers distinct[submit[i]]: the inverse permutation puts answers in distinct order
            answers = pa.array(outcome.values, kind).take(pc.sort_indices(submit))
            row_slot = pc.replace_with_mask(pa.nulls(table.num_rows, pa.int64()), valid, slot.cast(pa.int64()))
            column = answers.take(row_slot)  # a NULL slot (NULL text) gives NULL
        return table.append_column(output, column)
