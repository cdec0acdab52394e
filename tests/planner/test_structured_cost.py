"""Structured output is priced: each constrained generated token pays for the grammar's mask."""
from __future__ import annotations

from operators.requests import SamplingParams, StructuredOutput
from planner.examples import context
from planner.request import plan_request


def estimate(sampling: SamplingParams):
    # speculation off: a constrained row cannot speculate, so with it on the two would differ in decode too
    plan = plan_request("smollm2", [tuple(range(40))] * 4, sampling, True, context(speculative="off"))
    op = plan.plan.op(plan.llm_nodes()[0])
    return op.estimate, dict(op.params())


def test_a_constrained_call_costs_more_overhead_and_explain_says_why():
    free, _ = estimate(SamplingParams(max_tokens=32))
    constrained, params = estimate(SamplingParams(max_tokens=32, structured=StructuredOutput("json_object")))
    assert constrained.overhead_seconds > free.overhead_seconds
    assert constrained.decode_seconds == free.decode_seconds and constrained.prefill_seconds == free.prefill_seconds
    assert params["structured"] == "json_object"
