"""Runs tests/planner/fixtures/operator_kernels.sql: each case plans a query against statistics (no data, no
model) and checks what EXPLAIN says each of the model's operators runs, in JSON and in text."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from catalog.settings import Settings
from planner.examples import EXAMPLE_TVM_HARDWARE, SMOLLM2_FACTS
from planner.explain import render_json, render_text
from stats_catalog import StatsCatalog, fixture_catalog, parse_kernels, parse_settings, plan, settings_with

FIXTURES = Path(__file__).parent / "fixtures" / "operator_kernels.sql"


def load_cases() -> tuple[StatsCatalog, list[dict]]:
    text = FIXTURES.read_text()
    catalog = fixture_catalog(text)
    cases = []
    for block in re.split(r"^-- case: ", text, flags=re.M)[1:]:
        lines = block.splitlines()
        case = {"name": lines[0].strip(), "sql": [], "set": {}, "kernels": ("torch",), "expect": [], "why": [],
                "summary": None}
        section = "sql"
        for line in lines[1:]:
            if line.startswith("-- expect:"):
                section = "expect"
            elif m := re.match(r"-- (set|kernels|why|summary): (.*)", line):
                key, value = m.groups()
                if key == "set":
                    case["set"].update(parse_settings(value))
                elif key == "kernels":
                    case["kernels"] = parse_kernels(value)
                elif key == "why":
                    case["why"].append(tuple(s.strip() for s in value.split("~", 1)))
                else:
                    case["summary"] = value.strip()
                section = "done" if section == "expect" else section
            elif line.strip():
                case[section if section in ("sql", "expect") else "sql"].append(line.rstrip())
        cases.append(case)
    return catalog, cases


CATALOG, CASES = load_cases()


def explain(case: dict, catalog: StatsCatalog = CATALOG) -> tuple[dict, str]:
    """The first model call's JSON node and the whole EXPLAIN (VERBOSE) text."""
    physical = plan("\n".join(case["sql"]), catalog, settings_with(case["set"]), case["kernels"])
    node = json.loads(render_json(physical))["plan"]
    while "operator_kernels" not in node:
        (node,) = node["children"]
    return node, render_text(physical, verbose=True)


def rows(n: float) -> str:
    return f"{n:,.0f} row{'' if round(n) == 1 else 's'}"


def described(k: dict) -> str:
    """An operator's JSON entry as a fixture's expect line."""
    parts = [" ".join(filter(None, (k["stored"], k["computed"])))]
    parts += [f"{phase} {k[phase]} ({rows(k[f'{phase}_rows'])})" for phase in ("decode", "prefill") if k[phase]]
    return f"{k['operator']}: " + "; ".join(filter(None, parts))


def test_there_are_cases_for_every_weight_path():
    paths = {(c["set"].get("weight_format"), c["set"].get("kernels"), "tvm" in c["kernels"]) for c in CASES}
    assert len(CASES) >= 7 and len(paths) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case):
    node, text = explain(case)
    kernels = node["operator_kernels"]
    assert [described(k) for k in kernels] == case["expect"]
    why = {k["operator"]: k["why"] for k in kernels}
    for operator, fragment in case["why"]:
        assert fragment in why[operator], f"{operator}: {why[operator]!r} lacks {fragment!r}"
    lines = [line.strip() for line in text.splitlines()]
    if case["summary"] is not None:
        assert f"kernels: {case['summary']}" in lines
    # EXPLAIN (VERBOSE) has one line per operator, ending with its reason
    verbose = [line for line in lines if line.startswith("kernel ")]
    assert [line.split(":", 1)[0] for line in verbose] == [f"kernel {k['operator']}" for k in kernels]
    assert all(line.endswith(k["why"]) for line, k in zip(verbose, kernels))


def test_the_default_explain_has_the_summary_but_not_the_per_operator_lines():
    physical = plan("\n".join(CASES[0]["sql"]), CATALOG, Settings(), CASES[0]["kernels"])
    lines = [line.strip() for line in render_text(physical).splitlines()]
    assert sum(line.startswith("kernels: ") for line in lines) == 1
    assert not any(line.startswith("kernel ") for line in lines)


def test_linears_are_priced_on_the_chosen_path_and_the_runner_up():
    node, _ = explain(CASES[0])
    choice = next(c for c in node["choices"] if c["knob"] == "weight_format/kernels")
    for k in node["operator_kernels"][:5]:
        # the lossy bf16 weights are priced too (never picked unless SET): the cheapest other path here
        assert k["runner_up"] == choice["runner_up"] == "bf16/tvm"
        # single-digit rows: the fused GEMV beats torch's bf16 matmul, which streams 3x the bytes
        assert 0 < k["decode_seconds"] < k["runner_up_decode_seconds"]
        assert k["prefill_seconds"] > 0 and k["runner_up_prefill_seconds"] > 0


def test_an_entry_without_linear_formats_still_explains_its_weight_path():
    old = StatsCatalog()
    old.sources, old.stats = CATALOG.sources, CATALOG.stats
    old.facts = replace(SMOLLM2_FACTS, linear_formats=None)
    case = next(c for c in CASES if c["name"] == "native_tvm_small_batch_512_token_chunk")
    node, text = explain(case, old)
    assert [k["operator"] for k in node["operator_kernels"]] == ["linears", "norms", "silu_mul", "attention", "forward"]
    assert "kernels: linears weight path native/tvm; norms: tvm rms_norm, add_rms_norm; silu_mul: tvm silu_mul; " \
           "attention KV cache fp32: tvm rope_qkv + paged_attention; forward: decode captured kernel calls (4 rows), " \
           "prefill Python forward (501 rows)" in [line.strip() for line in text.splitlines()]
    assert "CREATE OR REPLACE MODEL" in node["operator_kernels"][0]["why"]


def test_the_linears_are_every_matmul_weight_the_cost_model_prices():
    from planner.operator_kernels import linear_weights

    assert sum(linear_weights(SMOLLM2_FACTS).values()) == SMOLLM2_FACTS.config.flops_per_token / 2


# a machine that timed the greedy screen and whose GEMV beats its GEMM everywhere (Zen 4, 2026-12-07)
SCREENING = replace(EXAMPLE_TVM_HARDWARE, quant_gemv_max_tokens=512, quant_gemv_batch_rate=1.18e11,
                    quant_screen_rate=1.73e11)


@pytest.mark.parametrize("options, screened", [
    ("temperature => 0", True),
    ("temperature => 0.7", False),  # sampled: the full distribution
    ("temperature => 0, beam_width => 2", False),  # beams rank by log-probabilities
    ("temperature => 0, regex => '[a-z]+'", False),  # a grammar masks logits before the argmax
    ("temperature => 0, repetition_penalty => 1.2", False),  # penalties change logits before the argmax
])
def test_greedy_rows_take_the_lm_heads_argmax_through_the_screen(options, screened):
    sql = f"SELECT id, generate('smollm2', 'Summarize: ' || body, max_tokens => 32, {options}) FROM reviews"
    physical = plan(sql, CATALOG, settings_with({"max_batch_size": "64"}), ("torch", "tvm"), SCREENING)
    node = json.loads(render_json(physical))["plan"]
    while "operator_kernels" not in node:
        (node,) = node["children"]
    head = next(k for k in node["operator_kernels"] if k["operator"] == "lm_head")
    assert (head["decode"] == "tvm quant_gemv greedy screen") is screened
    assert ("quant_screen_rate 173 G weights x rows/s" in head["why"]) is screened
    gate_up = next(k for k in node["operator_kernels"] if k["operator"] == "gate_up")
    assert gate_up["decode"] == "tvm quant_gemv"  # 64 rows: this machine's GEMV range


def test_a_bf16_lm_head_takes_greedy_rows_through_the_screen_over_its_blocks():
    sql = "SELECT id, generate('smollm2', 'Summarize: ' || body, max_tokens => 32, temperature => 0) FROM reviews"
    zen4 = replace(SCREENING, bf16_matmul_flops=4.2e11)
    physical = plan(sql, CATALOG, settings_with({"max_batch_size": "64", "weight_format": "bf16"}), ("torch", "tvm"),
                    zen4)
    node = json.loads(render_json(physical))["plan"]
    while "operator_kernels" not in node:
        (node,) = node["children"]
    head = next(k for k in node["operator_kernels"] if k["operator"] == "lm_head")
    assert head["decode"] == "tvm quant_gemv greedy screen"
    assert "of the bf16 rows: the screen reads the Q8_0 blocks" in head["why"]
    gate_up = next(k for k in node["operator_kernels"] if k["operator"] == "gate_up")
    assert gate_up["decode"] == "tvm bf16_matmul"
