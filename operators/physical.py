"""Physical plan nodes: every knob decided, every estimate attached.

Like the logical nodes they only describe themselves (`name`, `params()`);
planner/explain.py renders them. `estimate` is the cost model's prediction,
`choices` the optimizer's decisions with their runner-ups, and a model call's
`operator_kernels` what each of the model's operators runs under those decisions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from operators.engine_config import EngineConfig
from operators.logical import AggregateCall, LLMOptions, SortKey, TableSource, join_keys, sort_keys, sql, sql_join
from operators.requests import SamplingParams


@dataclass(frozen=True)
class Estimate:
    rows: float
    seconds: float = 0.0
    prompt_tokens: float = 0.0  # all rows' prompt tokens (before the prefix cache)
    computed_prompt_tokens: float = 0.0  # of those, the ones prefill must compute
    output_tokens: float = 0.0
    kv_bytes: float = 0.0  # peak KV memory
    llm_calls: float = 0.0  # sequences the engine runs
    prefill_seconds: float = 0.0  # of `seconds`, prompt processing (model calls only)
    decode_seconds: float = 0.0  # of `seconds`, token generation (model calls only)
    overhead_seconds: float = 0.0  # of `seconds`, Python and kernel launches (model calls only)


@dataclass(frozen=True)
class Choice:
    """One decision: the value picked, its estimated seconds, and the best alternative's."""
    knob: str
    value: object
    seconds: float
    runner_up: object = None
    runner_up_seconds: float | None = None
    forced: bool = False  # a hint the optimizer obeyed
    forced_by: str = "SET"  # or "the running engine": the server's shared engine already runs the model
    note: str = ""  # e.g. the estimated saving


@dataclass(frozen=True)
class OperatorKernel:
    """What one operator of the model runs under the chosen knobs, and why (planner/operator_kernels.py).

    Seconds are the cost model's price of one step's worth of the operator, every layer together: on the
    chosen weight path and on the runner-up's (None where it prices the operator only as launch overhead).
    """
    # 'qkv' | 'o' | 'gate_up' | 'down' | 'lm_head' | 'norms' | 'silu_mul' | 'attention'; 'linears' (all five, where
    # the catalog does not know their formats: only the weight path is said)
    operator: str
    stored: str = ""  # the weight's format as the model is built ('Q4_1', 'fp32'); '' without one
    computed: str = ""  # what the kernels read: 'kept quantized', 'dequantized to fp32 at load', ...
    decode: str = ""  # the kernel of a decode step ('' when nothing decodes)
    prefill: str = ""  # the kernel of a prefill step ('' when nothing is prefilled)
    decode_rows: float = 0.0  # rows a step gives it: sequences decoding, prompt tokens (lm_head: logit rows)
    prefill_rows: float = 0.0
    decode_seconds: float | None = None
    prefill_seconds: float | None = None
    runner_up: str | None = None  # the weight path priced against the chosen one
    runner_up_decode_seconds: float | None = None
    runner_up_prefill_seconds: float | None = None
    why: str = ""


def _no_estimate() -> Estimate:
    return Estimate(rows=0)


@dataclass(frozen=True)
class Relational:
    """A query without model calls: DuckDB plans and runs it whole."""
    query: str
    reads: tuple[str, ...]
    engine_plan: str = ""
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "Relational"

    def params(self):
        return [("engine", "duckdb"), ("query", self.query), ("reads", ", ".join(self.reads) or "(no table)"),
                ("duckdb plan", self.engine_plan or "(none)")]


@dataclass(frozen=True)
class SetOp:
    kind: str
    distinct: bool
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "SetOp"

    def params(self):
        return [("operation", self.kind + ("" if self.distinct else " ALL"))]


@dataclass(frozen=True)
class TableScan:
    source: TableSource
    alias: str
    read: tuple[str, ...]
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "TableScan"

    def params(self):
        return [("source", f"{self.source.kind}:{self.source.location}"), ("columns", ", ".join(self.read))]


@dataclass(frozen=True)
class Filter:
    predicates: tuple[exp.Expr, ...]
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "Filter"

    def params(self):
        return [("predicate", sql_join(" AND ", self.predicates))]


@dataclass(frozen=True)
class Project:
    outputs: tuple[tuple[str, exp.Expr], ...]
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "Project"

    def params(self):
        return [("columns", sql_join(", ", (n if isinstance(e, exp.Column) and e.name == n else sql(e, f" AS {n}")
                                            for n, e in self.outputs)))]


@dataclass(frozen=True)
class BatchedGenerate:
    """All rows' prompts go to the engine as one continuous batch."""
    model: str
    prompt: exp.Expr
    sampling: SamplingParams
    chat: bool
    output: str
    options: LLMOptions
    knobs: EngineConfig
    template: str  # the prompt's shape, keying output-length statistics
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    operator_kernels: tuple[OperatorKernel, ...] = ()
    priority: int = 0  # of every request it submits: lower runs first (vLLM's convention)
    n: int = 1  # samples per row (a list<string> column when > 1)
    name = "BatchedGenerate"

    def params(self):
        s = self.sampling
        return [("model", self.model), ("prompt", sql(self.prompt)), ("max_tokens", s.max_tokens),
                ("temperature", s.temperature), ("dedup", self.options.dedup), ("order", self.options.order)] + (
                    [("priority", self.priority)] if self.priority else []) + ([("n", self.n)] if self.n > 1 else []) + (
                    [("structured", s.structured.describe())] if s.structured is not None else []) + (
                    [("beam_width", s.beam_width)] if s.beam_width > 1 else [])


@dataclass(frozen=True)
class BatchedClassify:
    """Scores every label's tokens after each row's prompt; picks the most likely label."""
    model: str
    text: exp.Expr
    labels: tuple[str, ...]
    instruction: str
    output: str
    options: LLMOptions
    knobs: EngineConfig
    template: str
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    operator_kernels: tuple[OperatorKernel, ...] = ()
    priority: int = 0
    name = "BatchedClassify"

    def params(self):
        return [("model", self.model), ("text", sql(self.text)), ("labels", list(self.labels)),
                ("dedup", self.options.dedup), ("order", self.options.order)] + (
                    [("priority", self.priority)] if self.priority else [])


@dataclass(frozen=True)
class Sort:
    keys: tuple[SortKey, ...]
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "Sort"

    def params(self):
        return [("keys", sort_keys(self.keys))]


@dataclass(frozen=True)
class TopN:
    """ORDER BY ... LIMIT n: keeps the best n rows without sorting them all."""
    keys: tuple[SortKey, ...]
    count: int
    offset: int = 0
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "TopN"

    def params(self):
        return [("keys", sort_keys(self.keys)),
                ("count", self.count)] + ([("offset", self.offset)] if self.offset else [])


@dataclass(frozen=True)
class Limit:
    count: int | None
    offset: int = 0
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "Limit"

    def params(self):
        return [("count", self.count)] + ([("offset", self.offset)] if self.offset else [])


@dataclass(frozen=True)
class HashJoin:
    kind: str
    left_keys: tuple[exp.Expr, ...]
    right_keys: tuple[exp.Expr, ...]
    residual: exp.Expr | None = None
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "HashJoin"

    def params(self):
        return [("type", self.kind), ("keys", join_keys(self.left_keys, self.right_keys, "(cross)"))] + (
            [("residual", sql(self.residual))] if self.residual is not None else [])


@dataclass(frozen=True)
class HashAggregate:
    groups: tuple[str, ...]
    aggregates: tuple[AggregateCall, ...]
    estimate: Estimate = field(default_factory=_no_estimate)
    choices: tuple[Choice, ...] = ()
    name = "HashAggregate"

    def params(self):
        aggs = sql_join(", ", (sql(a.call) for a in self.aggregates))
        return [("groups", ", ".join(self.groups) or "(all rows)")] + ([("aggregates", aggs)] if self.aggregates else [])


LLM_OPERATORS = (BatchedGenerate, BatchedClassify)
