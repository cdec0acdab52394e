"""Online, scheduling is judged by latency: shortest-predicted-first where earlier lengths differ."""
from __future__ import annotations

from dataclasses import replace

import pytest

from catalog.settings import Settings
from operators.requests import SamplingParams
from planner.examples import context
from planner.request import plan_request


def scheduling_choice(spread, settings=Settings(), online=True):
    ctx = replace(context(settings), online=online, length_spread=spread)
    plan = plan_request("smollm2", [tuple(range(60))], SamplingParams(max_tokens=64), True, ctx)
    op = plan.plan.op(plan.llm_nodes()[0])
    return next(c for c in op.choices if c.knob == "scheduling")


@pytest.mark.parametrize("spread,value,says", [
    ((8.0, 180.0, 40), "spf", "40 earlier requests' output lengths run 8-180 tokens"),
    ((40.0, 60.0, 40), "fcfs", "too alike"),
    (None, "fcfs", "fewer than 4 earlier requests"),
])
def test_online_plans_pick_spf_where_lengths_differ(spread, value, says):
    choice = scheduling_choice(spread)
    assert choice.value == value and says in choice.note and not choice.forced


def test_a_set_scheduling_is_obeyed_online():
    choice = scheduling_choice((8.0, 180.0, 40), Settings().with_value("scheduling", "fcfs"))
    assert choice.value == "fcfs" and choice.forced


def test_batch_sql_keeps_its_makespan_rule():
    assert scheduling_choice((8.0, 180.0, 40), online=False).value == "fcfs"
