"""Speculation pays only above an acceptance: the optimizer prices that break-even and hands it to the engine,
which stops a sequence drafting below it (runtime/speculation.still_pays)."""
from __future__ import annotations

from dataclasses import replace

from catalog.settings import Settings
from operators import physical as P
from planner.examples import EXAMPLE_TVM_HARDWARE
from stats_catalog import fixture_catalog, plan

CATALOG = fixture_catalog("-- table: one rows=1: id int; body text len=200")
QUERY = "SELECT generate('smollm2', body, max_tokens => 128) FROM one"


# TVM's fused Q4_1 GEMV where 4 rows cost 2x one row (AMD EPYC Zen 4 measured 2.5x the rate at 4 rows)
HARDWARE = replace(EXAMPLE_TVM_HARDWARE, quant_gemv_rate_t4=2 * EXAMPLE_TVM_HARDWARE.quant_gemv_rate_t1)


NATIVE = Settings().with_value("weight_format", "native").with_value("kernels", "tvm")


def speculation(settings=NATIVE, hardware=HARDWARE):
    physical = plan(QUERY, CATALOG, settings, hardware=hardware)
    op = next(physical.plan.op(n) for n in physical.plan.walk() if isinstance(physical.plan.op(n), P.LLM_OPERATORS))
    return next(c for c in op.choices if c.knob == "speculative"), op.knobs


def test_a_single_stream_drafts_with_a_break_even_acceptance():
    choice, knobs = speculation()
    assert knobs.speculative == "ngram"  # batch 1 reads every weight for one token: drafts cost little
    assert 0.0 < knobs.speculative_min_acceptance < 1.0
    assert f"at least {knobs.speculative_min_acceptance:.0%} of its latest drafts" in choice.note


def test_costlier_verification_raises_the_break_even():
    _, cheap = speculation()
    # a 4-row GEMV costing 3.3x a 1-row one: verifying drafts is nearly as dear as decoding them
    _, dear = speculation(hardware=replace(HARDWARE, quant_gemv_rate_t4=1.2 * HARDWARE.quant_gemv_rate_t1))
    assert dear.speculative == "off" or dear.speculative_min_acceptance > cheap.speculative_min_acceptance


def test_set_speculative_drafts_whatever_the_acceptance():
    _, knobs = speculation(NATIVE.with_value("speculative", "ngram"))
    assert (knobs.speculative, knobs.speculative_min_acceptance) == ("ngram", 0.0)
