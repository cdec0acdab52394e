"""The cost model's q-error for total query time on W1 and W2 (shared/workloads.md), through SQL.

    python -m bench.cost_qerror --home /tmp/qerr --w1-rows 16 --w1-tokens 32 --w2-rows 100 --runs 3

Each run is `EXPLAIN ANALYZE (FORMAT JSON)` on a fresh connection (a fresh engine, so no run finds
another's prompts in the prefix cache); the q-error is the plan's estimated seconds against the
measured seconds less model loading. Every run records its estimate beside its actual time in the
catalog, and the next plan's correction is fitted from those (planner/calibration.py): the first
run is the uncalibrated model, the later ones calibrated by the runs before them.
"""
from __future__ import annotations

import argparse
import json
import statistics

import pyarrow as pa

from bench.engine_throughput import W1_PROMPTS
from bench.w2_data import make_table, query as w2_query


def w1_sql(tokens: int) -> str:
    return f"SELECT i, generate('smollm2', prompt, max_tokens => {tokens}, temperature => 0) AS review FROM w1"


def run_once(home: str, name: str, sql: str, tables: dict[str, pa.Table], settings: dict[str, str]) -> dict:
    import sqlm

    with sqlm.connect(home) as con:
        for table_name, table in tables.items():
            con.register(table_name, table)
        for k, v in settings.items():
            con.sql(f"SET {k} = {v}")
        d = json.loads(con.sql(f"EXPLAIN ANALYZE (FORMAT JSON) {sql}").arrow().column(0)[0].as_py())
    llm = _llm_node(d["plan"])
    return {"workload": name, "estimated_s": d["estimated_seconds"],
            "actual_s": d["actual_seconds"] - d["model_load_seconds"], "q_error": d["q_error_total_seconds"],
            "prefill_s": llm["estimate"].get("prefill_seconds"), "decode_s": llm["estimate"].get("decode_seconds"),
            "knobs": {c["knob"]: c["value"] for c in llm["choices"]}}


def _llm_node(node: dict) -> dict:
    if "choices" in node:
        return node
    return next(n for n in (_llm_node(c) for c in node["children"]) if n is not None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True, help="catalog directory; its feedback is what calibration learns from")
    p.add_argument("--w1-rows", type=int, default=64)
    p.add_argument("--w1-tokens", type=int, default=64)
    p.add_argument("--w2-rows", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="name=value, applied with SET before each query")
    p.add_argument("--only", choices=["w1", "w2"])
    args = p.parse_args(argv)
    settings = dict(kv.split("=", 1) for kv in args.set)
    workloads = {
        "w1": (w1_sql(args.w1_tokens), {"w1": pa.table({"i": list(range(args.w1_rows)),
                                                          "prompt": W1_PROMPTS[:args.w1_rows]})}),
        "w2": (w2_query("reviews"), {"reviews": make_table(args.w2_rows)}),
    }
    results = []
    for run in range(args.runs):
        for name, (sql, tables) in workloads.items():
            if args.only and name != args.only:
                continue
            r = run_once(args.home, name, sql, tables, settings)
            r["run"] = run
            results.append(r)
            print(json.dumps(r), flush=True)
    for name in workloads:
        qs = [r["q_error"] for r in results if r["workload"] == name and r["run"] > 0]
        if qs:
            print(f"{name}: calibrated q-error median {statistics.median(qs):.2f}, max {max(qs):.2f}")


if __name__ == "__main__":
    main()
