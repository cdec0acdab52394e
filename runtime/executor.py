"""Runs a physical plan: vectorized Arrow operators, model calls batched through the engine.

Every relational operator is a handful of pyarrow.compute / Acero calls over whole
columns. A model-calling operator hands all of its rows to the engine at once (one
continuous batch), after deduplicating identical prompts and ordering them by
prefix when the plan says so, and puts the answers back in row order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from catalog.sources import load
from operators import physical as P
from runtime.expressions import evaluate
from runtime.llm_ops import LLMOutcome, LLMService

_JOIN_TYPES = {"inner": "inner", "left": "left outer", "right": "right outer", "full": "full outer", "cross": "inner"}
_AGG_FUNCTIONS = {"count": "count", "count_all": "count_all", "sum": "sum", "min": "min", "max": "max",
                  "mean": "mean", "count_distinct": "count_distinct"}


@dataclass
class Actuals:
    """What one operator really did (EXPLAIN ANALYZE prints these beside the estimates)."""
    rows: int = 0
    seconds: float = 0.0  # this operator alone, inputs excluded
    llm: LLMOutcome | None = None
    distinct_inputs: int | None = None  # prompts sent to the engine after dedup


ProgressCallback = Callable[[int, int, int], None]  # (rows done, rows total, tokens generated)


class Executor:
    def __init__(self, llm: LLMService, on_progress: ProgressCallback | None = None) -> None:
        self.llm = llm
        self.on_progress = on_progress

    def run(self, plan) -> tuple[pa.Table, dict[int, Actuals]]:
        """plan: anything with root, inputs(node) and op(node), e.g. planner.graph.Plan of physical nodes."""
        actuals: dict[int, Actuals] = {}
        table = self._run(plan, plan.root, actuals)
        return table, actuals

    def _run(self, plan, node: int, actuals: dict[int, Actuals]) -> pa.Table:
        inputs = [self._run(plan, child, actuals) for child in plan.inputs(node)]
        op = plan.op(node)
        t0 = time.perf_counter()
        record = Actuals()
        out = getattr(self, f"_{op.name}")(op, inputs, record)
        record.rows, record.seconds = out.num_rows, time.perf_counter() - t0
        actuals[node] = record
        return out

    # -- relational ---------------------------------------------------------------------
    def _TableScan(self, op: P.TableScan, inputs, record) -> pa.Table:
        table = load(op.source, op.read)
        prefix = f"{op.alias}." if op.alias else ""
        return table.rename_columns([prefix + c for c in op.read])

    def _Filter(self, op: P.Filter, inputs, record) -> pa.Table:
        table = inputs[0]
        for predicate in op.predicates:  # cheapest first: later predicates see fewer rows
            if table.num_rows == 0:
                break
            table = table.filter(evaluate(predicate, table))
        return table

    def _Project(self, op: P.Project, inputs, record) -> pa.Table:
        table = inputs[0]
        return pa.table({name: evaluate(e, table) for name, e in op.outputs}) if op.outputs else table.select([])

    def _sorted_indices(self, table: pa.Table, keys) -> pa.Array:
        columns, order = {}, []
        for i, key in enumerate(keys):
            name = f"__sort_{i}"
            columns[name] = evaluate(key.expr, table)
            order.append((name, "descending" if key.descending else "ascending",
                          "at_start" if key.nulls_first else "at_end"))
        return pc.sort_indices(pa.table(columns), sort_keys=order)

    def _Sort(self, op: P.Sort, inputs, record) -> pa.Table:
        return inputs[0].take(self._sorted_indices(inputs[0], op.keys))

    def _TopN(self, op: P.TopN, inputs, record) -> pa.Table:
        indices = self._sorted_indices(inputs[0], op.keys)
        return inputs[0].take(indices.slice(op.offset, op.count))

    def _Limit(self, op: P.Limit, inputs, record) -> pa.Table:
        return inputs[0].slice(op.offset, op.count)

    def _HashJoin(self, op: P.HashJoin, inputs, record) -> pa.Table:
        left, right = inputs
        if op.kind == "cross":
            left_keys, right_keys = [pa.array([0] * left.num_rows)], [pa.array([0] * right.num_rows)]
        else:
            left_keys = [evaluate(k, left) for k in op.left_keys]
            right_keys = [evaluate(k, right) for k in op.right_keys]
        lnames = [f"__lk_{i}" for i in range(len(left_keys))]
        rnames = [f"__rk_{i}" for i in range(len(right_keys))]
        for n, a in zip(lnames, left_keys):
            left = left.append_column(n, a)
        for n, a in zip(rnames, right_keys):
            right = right.append_column(n, a)
        joined = left.join(right, keys=lnames, right_keys=rnames, join_type=_JOIN_TYPES[op.kind],
                           coalesce_keys=False, use_threads=False)
        joined = joined.drop_columns([c for c in lnames + rnames if c in joined.column_names])
        if op.residual is not None:
            joined = joined.filter(evaluate(op.residual, joined))
        return joined

    def _HashAggregate(self, op: P.HashAggregate, inputs, record) -> pa.Table:
        table = inputs[0]
        specs = [([] if a.function == "count_all" else a.argument, _AGG_FUNCTIONS[a.function]) for a in op.aggregates]
        grouped = table.group_by(list(op.groups), use_threads=False).aggregate(specs)
        names = {f"{a.argument}_{_AGG_FUNCTIONS[a.function]}" if a.argument else "count_all": a.output
                 for a in op.aggregates}
        return grouped.select(list(op.groups) + list(names)).rename_columns(list(op.groups) + list(names.values()))

    # -- model calls --------------------------------------------------------------------
    def _BatchedGenerate(self, op: P.BatchedGenerate, inputs, record) -> pa.Table:
        def run(prompts: list[str]) -> LLMOutcome:
            return self.llm.generate(op.model, op.knobs, prompts, op.sampling, op.chat, self.on_progress, op.priority)
        return self._llm_column(inputs[0], op.prompt, op.output, op.options, run, record)

    def _BatchedClassify(self, op: P.BatchedClassify, inputs, record) -> pa.Table:
        def run(texts: list[str]) -> LLMOutcome:
            return self.llm.classify(op.model, op.knobs, texts, op.labels, op.instruction, self.on_progress)
        return self._llm_column(inputs[0], op.text, op.output, op.options, run, record)

    def _llm_column(self, table: pa.Table, expr, output: str, options, run, record: Actuals) -> pa.Table:
        texts = evaluate(expr, table)
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
        column = pa.nulls(table.num_rows, pa.string())
        if ordered:
            # outcome i answers distinct[submit[i]]: the inverse permutation puts answers in distinct order
            answers = pa.array(outcome.values, pa.string()).take(pc.sort_indices(submit))
            column = pc.replace_with_mask(column, valid, answers.take(slot))
        return table.append_column(output, column)
