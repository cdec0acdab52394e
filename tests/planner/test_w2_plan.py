"""Acceptance: on W2 (shared-prefix classification, shuffled rows) the optimizer, with no hints,
chooses prefix-aware ordering and the prefix cache, and EXPLAIN shows the estimated saving."""
from __future__ import annotations

from bench.w2_data import make_table, query
from catalog.settings import Settings
from operators import physical as P
from planner.explain import render_text
from planner.statistics import compute_column_stats
from stats_catalog import StatsCatalog, plan


def w2_catalog() -> StatsCatalog:
    table = make_table()
    stats = compute_column_stats(table)
    catalog = StatsCatalog()
    kinds = {"id": "int", "category": "text", "body": "text"}
    catalog.add_table("reviews", table.num_rows, {c: (kinds[c], stats[c]) for c in table.column_names})
    return catalog


def test_w2_chooses_prefix_order_and_cache_with_saving():
    physical = plan(query("reviews"), w2_catalog(), Settings())
    op = next(physical.plan.op(n) for n in physical.llm_nodes())
    assert isinstance(op, P.BatchedClassify)
    choices = {c.knob: c for c in op.choices}
    assert choices["order"].value == "prefix" and op.options.order == "prefix"
    assert choices["prefix_cache"].value == "on" and not choices["prefix_cache"].forced
    assert choices["order"].runner_up_seconds > choices["order"].seconds
    text = render_text(physical, verbose=True)
    assert "choice order = prefix" in text and "saves" in text and "over arrival order" in text
    assert "choice prefix_cache = on" in text and "prefix_ordering: fired" in text


def test_w2_without_cache_does_not_reorder():
    physical = plan(query("reviews"), w2_catalog(), Settings().with_value("prefix_cache", "off"))
    op = next(physical.plan.op(n) for n in physical.llm_nodes())
    assert op.options.order == "arrival" and not op.knobs.prefix_cache
