"""Runs tests/planner/fixtures/optimizer.sql: each case plans a query against statistics (no data, no model)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from operators import physical as P
from stats_catalog import StatsCatalog, fixture_catalog, parse_kernels, parse_settings, plan, settings_with

FIXTURES = Path(__file__).parent / "fixtures" / "optimizer.sql"


def load_cases() -> tuple[StatsCatalog, list[dict]]:
    text = FIXTURES.read_text()
    catalog = fixture_catalog(text)
    cases = []
    for block in re.split(r"^-- case: ", text, flags=re.M)[1:]:
        lines = block.splitlines()
        case = {"name": lines[0].strip(), "sql": [], "plan": [], "set": {}, "kernels": ("torch",), "expect": {}}
        section = "sql"
        for line in lines[1:]:
            if line.startswith("-- plan:"):
                section = "plan"
            elif m := re.match(r"-- (set|kernels|fired|unchanged|choice|runner_up|forced|note|scan|rows): (.*)", line):
                key, value = m.groups()
                if key == "set":
                    case["set"].update(parse_settings(value))
                elif key == "kernels":
                    case["kernels"] = parse_kernels(value)
                else:
                    case["expect"][key] = value.strip()
                section = "done" if section == "plan" else section
            elif section == "sql" and line.strip():
                case["sql"].append(line)
            elif section == "plan" and line.strip():
                case["plan"].append(line.rstrip())
        cases.append(case)
    return catalog, cases


CATALOG, CASES = load_cases()


def test_there_are_at_least_40_cases_with_negative_ones():
    assert len(CASES) >= 40
    assert sum("unchanged" in c["expect"] for c in CASES) >= 8


def _first(physical, kinds):
    return next(physical.plan.op(n) for n in physical.plan.walk() if isinstance(physical.plan.op(n), kinds))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case):
    physical = plan("\n".join(case["sql"]), CATALOG, settings_with(case["set"]), case["kernels"])
    if case["plan"]:
        assert physical.plan.describe() == "\n".join(case["plan"])
    status = {r.name: r.status for r in physical.rules}
    expect = case["expect"]
    for rule in filter(None, (r.strip() for r in expect.get("fired", "").split(","))):
        assert status[rule] == "fired", f"{rule} should fire: {status}"
    for rule in filter(None, (r.strip() for r in expect.get("unchanged", "").split(","))):
        assert status[rule] == "unchanged", f"{rule} must not fire: {status}"
    if "choice" in expect:
        op = _first(physical, P.LLM_OPERATORS)
        choices = {c.knob: c.value for c in op.choices}
        for pair in expect["choice"].split(","):
            knob, value = (s.strip() for s in pair.split("=", 1))
            assert str(choices[knob]) == value, f"{knob}: {choices[knob]} != {value}"
    if "runner_up" in expect or "forced" in expect or "note" in expect:
        op = _first(physical, P.LLM_OPERATORS)
        by_knob = {c.knob: c for c in op.choices}
        for pair in filter(None, expect.get("runner_up", "").split(",")):
            knob, value = (s.strip() for s in pair.split("=", 1))
            assert str(by_knob[knob].runner_up) == value, f"{knob} runner-up: {by_knob[knob].runner_up} != {value}"
        for knob in filter(None, (k.strip() for k in expect.get("forced", "").split(","))):
            assert by_knob[knob].forced, f"{knob} should be forced"
        if "note" in expect:
            knob, text = (s.strip() for s in expect["note"].split("~", 1))
            assert text in by_knob[knob].note, f"{knob} note {by_knob[knob].note!r} lacks {text!r}"
    if "scan" in expect:
        scan = _first(physical, (P.TableScan,))
        assert ", ".join(scan.read) == expect["scan"]
    if "rows" in expect:
        op = _first(physical, P.LLM_OPERATORS)
        assert round(op.estimate.rows) == int(expect["rows"])
