"""W5: copy-heavy requests with speculative decoding off, forced n-gram and the optimizer's choice (auto).

    python -m bench.speculative [--out bench/results/speculative.md]

Through SQL on SmolLM2 (the default plan otherwise), greedy, max_tokens 96: batch 1 is W5's 16 prompts as
16 single-row queries; batch 16 and 64 are one query over a table of that many prompts. Each mode runs on a
fresh catalog and first runs untimed queries of the same template on other W5 prompts (4 single rows, or one
table of the batch's size), so auto plans from what it measured there, as it would after a first query; every
configuration's outputs must equal speculation-off's. Figures: engine seconds (weights loaded before timing),
generated tokens per second, draft acceptance from EXPLAIN ANALYZE's counters.
"""
from __future__ import annotations

import argparse
import tempfile

from bench.machine import describe, publish
from bench.w5_passages import prompts

MODES = ("off", "ngram", "auto")
MAX_TOKENS = 96


def run(mode: str, warm: list[list[str]], batches: list[list[str]]) -> tuple[list[str], float, int, int, int]:
    """(outputs, engine seconds, generated tokens, drafted, accepted) of the queries in `batches`, run after the
    untimed queries in `warm`."""
    import pyarrow as pa

    import sqlm

    con = sqlm.connect(tempfile.mkdtemp(prefix="sqlm_w5_"))
    con.sql(f"SET speculative = '{mode}'")
    con.sql("SELECT generate('smollm2', 'Hi', max_tokens => 2)").arrow()  # weights and kernels, untimed
    outputs, seconds, generated, drafted, accepted = [], 0.0, 0, 0, 0
    for i, batch in enumerate(warm + batches):
        con.register(f"w5_{i}", pa.table({"id": list(range(len(batch))), "prompt": batch}))
        table = con.sql(f"SELECT id, generate('smollm2', prompt, max_tokens => {MAX_TOKENS}) AS g FROM w5_{i} "
                        "ORDER BY id").arrow()
        if i < len(warm):
            continue
        outputs += table.column("g").to_pylist()
        (llm,) = [a.llm for a in con.last_actuals.values() if a.llm is not None]
        seconds += llm.seconds
        generated += llm.num_generated_tokens
        drafted += llm.num_draft_tokens
        accepted += llm.num_accepted_draft_tokens
    return outputs, seconds, generated, drafted, accepted


def literal_queries(mode: str, texts: list[str]) -> tuple[list[str], float]:
    """Single-row queries with the prompt as a literal (each its own template, no statistics): wall seconds of
    all of them on a fresh catalog, planning and prefill included."""
    import time

    import sqlm

    con = sqlm.connect(tempfile.mkdtemp(prefix="sqlm_w5_literal_"))
    con.sql(f"SET speculative = '{mode}'")
    con.sql("SELECT generate('smollm2', 'Hi', max_tokens => 2)").arrow()
    t0, outputs = time.perf_counter(), []
    for text in texts:
        literal = text.replace("'", "''")
        outputs.append(con.sql(f"SELECT generate('smollm2', '{literal}', max_tokens => 128)").arrow().column(0)[0].as_py())
    return outputs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    texts = prompts(128)
    measured, held = texts[:64], texts[64:]
    shapes = {"1": ([[p] for p in held[:4]], [[p] for p in measured[:16]]), "16": ([held[:16]], [measured[:16]]),
              "64": ([held], [measured])}
    lines = ["# W5: copy-heavy requests, speculative decoding", "", describe(), "",
             f"Greedy, max_tokens {MAX_TOKENS}; engine seconds (model load excluded); speedup against off.", "",
             "| batch | mode | engine s | tok/s | speedup | drafts accepted | outputs equal off |",
             "|---|---|---|---|---|---|---|"]
    for batch, (warm, queries) in shapes.items():
        base = None
        for mode in MODES:
            outputs, seconds, generated, drafted, accepted = run(mode, warm, queries)
            base = base or (outputs, seconds)
            rate = f"{accepted / drafted:.0%} of {drafted:,}" if drafted else "-"
            lines.append(f"| {batch} | {mode} | {seconds:.2f} | {generated / seconds:.0f} | {base[1] / seconds:.2f}x | "
                         f"{rate} | {'yes' if outputs == base[0] else 'NO'} |")
    held_out = prompts(20, seed=11)[-4:]
    off, auto = literal_queries("off", held_out), literal_queries("auto", held_out)
    lines += ["", f"Four held-out single-row queries with literal prompts (fresh catalogs, wall time): off {off[1]:.2f} s, "
              f"auto {auto[1]:.2f} s, {off[1] / auto[1]:.2f}x; outputs {'identical' if off[0] == auto[0] else 'DIFFER'}"]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
