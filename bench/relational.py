"""Relational work without model calls: sqlm against DuckDB run directly, on the same data.

    python -m bench.relational [--rows 10000000] [--rounds 3] [--out bench/results/relational.md]

Two tables (an in-memory Arrow table of `--rows` rows and a Parquet file of it) and five
everyday queries (scan + filter, group by, join, window, top-n). Each is timed through
`sqlm.connect().sql(...)` (parse, plan, register, DuckDB) and through `duckdb.sql(...)` on
the same relations, interleaved, minimum over rounds. The issue's bar is sqlm within 2x.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import sqlm
from bench.machine import describe, publish

QUERIES = {
    "filter + count": "SELECT count(*) AS n FROM {t} WHERE v > 0.5 AND cat <> 'c3'",
    "group by": "SELECT cat, count(*) AS n, avg(v) AS m, max(k) AS hi FROM {t} GROUP BY cat",
    "join + aggregate": "SELECT d.label, sum(f.v) AS s FROM {t} f JOIN dims d ON f.cat = d.cat GROUP BY d.label",
    "window (top per group)": "SELECT count(*) AS n FROM (SELECT k, row_number() OVER (PARTITION BY cat ORDER BY v DESC) "
                              "AS r FROM {t}) WHERE r <= 3",
    "top-n": "SELECT k, v FROM {t} ORDER BY v DESC LIMIT 10",
}


def data(rows: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(0)
    facts = pa.table({"k": np.arange(rows), "cat": pa.array([f"c{i}" for i in rng.integers(0, 100, rows)]),
                      "v": rng.random(rows)})
    dims = pa.table({"cat": [f"c{i}" for i in range(100)], "label": [f"group {i % 7}" for i in range(100)]})
    return facts, dims


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    facts, dims = data(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "facts.parquet"
        pq.write_table(facts, path)
        con = sqlm.connect(Path(tmp) / "home")
        con.register("facts", facts)
        con.register("pfacts", str(path))
        con.register("dims", dims)
        duck = duckdb.connect()
        duck.register("facts", facts)
        duck.register("dims", dims)
        duck.execute(f"CREATE VIEW pfacts AS SELECT * FROM read_parquet('{path}')")
        lines = [f"# Relational queries: sqlm vs DuckDB directly ({args.rows:,} rows)", "", describe(), "",
                 "| query | source | sqlm s | duckdb s | ratio |", "|---|---|---|---|---|"]
        for name, template in QUERIES.items():
            for source in ("facts", "pfacts"):
                query = template.format(t=source)
                ours = best(lambda: con.sql(query).arrow(), args.rounds)
                theirs = best(lambda: duck.sql(query).to_arrow_table(), args.rounds)
                label = "Arrow in memory" if source == "facts" else "Parquet file"
                lines.append(f"| {name} | {label} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f}x |")
                print(lines[-1], flush=True)
        con.close()
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
