"""An online request as a plan: its rows go through the same rules, cost model and knob
choices as a SQL query's generate(), so EXPLAIN, estimates and statistics cover it too.

There is no SQL to bind: the request names its model and arrives tokenized, so the logical
plan (Scan -> Generate -> Project) is built here, and its prompts' statistics are exact
rather than sampled from a table. One row per sequence the engine runs (OpenAI's `n`
asks for that many different samples of each prompt).

>>> from planner.examples import context
>>> physical = plan_request("smollm2", [tuple(range(60))], SamplingParams(max_tokens=16), True, context())
>>> print(physical.plan.describe())
Project
  BatchedGenerate
    TableScan
>>> op = physical.plan.op(physical.llm_nodes()[0])
>>> round(op.estimate.prompt_tokens), op.estimate.output_tokens, op.template
(60, 16.0, 'generate|?|chat=True')
"""
from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
from sqlglot import exp

from catalog.sources import TableSource
from operators import logical as L
from planner.context import ModelFacts, OptimizerContext
from planner.graph import Plan
from planner.lower import PhysicalPlan, lower
from planner.optimizer import optimize
from planner.statistics import ColumnStats, Statistics
from operators.requests import SamplingParams

SOURCE = "request"  # alias and fingerprint of the rows; templates read 'generate|?|chat=...'
_SCHEMA = pa.schema([("prompt", pa.string())])


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_stats(prompts: list[tuple[int, ...]], facts: ModelFacts, chat: bool) -> ColumnStats:
    """The prompts' exact figures in the estimator's unit: prompt_profile reads characters and multiplies
    by tokens_per_char (adding the chat template's tokens when chat), so these give back the exact tokens."""
    tpc = facts.tokens_per_char
    head = facts.chat_prefix_tokens if chat else 0
    template = head + (facts.chat_suffix_tokens if chat else 0)
    mean = sum(len(p) for p in prompts) / len(prompts)
    ordered = sorted(prompts)
    pairs = list(zip(ordered, ordered[1:]))
    shared = sum(_common_prefix(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0
    return ColumnStats(rows=len(prompts), distinct=len(prompts), nulls=0, avg_chars=max(0.0, mean - template) / tpc,
                       sorted_lcp_chars=max(0.0, shared - head) / tpc)


def request_plan(model: str, sampling: SamplingParams, chat: bool, rows: int) -> Plan:
    """The logical plan the binder would build for `SELECT generate(model, prompt) AS text FROM request`."""
    source = TableSource(SOURCE, "online request", _SCHEMA, row_count=rows, fingerprint=SOURCE)
    generate = L.Generate(model, exp.column(f"{SOURCE}.prompt", quoted=True), sampling, chat, "__llm_0")
    text = L.Project((("text", exp.column("__llm_0", quoted=True)),))
    return Plan.chain(L.Scan(source, SOURCE, ("prompt",)), generate, text, output_names=("text",))


def plan_request(model: str, prompts: list[tuple[int, ...]], sampling: SamplingParams, chat: bool,
                 ctx: OptimizerContext, predicted_output: tuple[float, str] | None = None) -> PhysicalPlan:
    """prompts: one token-id tuple per sequence; sampling: the first one's (choices differ only in their seed);
    predicted_output: the per-request length predictor's (tokens, source) for these prompts."""
    known = {SOURCE: {"prompt": prompt_stats(prompts, ctx.model(model), chat)}}
    ctx = replace(ctx, statistics=Statistics(ctx.statistics.store, known, predicted_output))
    optimized, rules = optimize(request_plan(model, sampling, chat, len(prompts)), ctx)
    return lower(optimized, rules, ctx)
