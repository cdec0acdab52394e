"""End to end on the real default model: one small query, the way a user runs it."""
from __future__ import annotations

import pyarrow as pa
import sqlm


def test_generate_over_a_table_with_the_default_model(tmp_path):
    con = sqlm.connect(tmp_path / "home")
    con.register("q", pa.table({"id": [1, 2, 3, 4], "country": ["France", "France", "Italy", "France"]}))
    out = con.sql("SELECT id, generate('smollm2', 'What is the capital of ' || country || '?', max_tokens => 8) AS answer "
                  "FROM q WHERE id <> 2 ORDER BY id").arrow().to_pylist()
    assert [r["id"] for r in out] == [1, 3, 4]
    assert "Paris" in out[0]["answer"] and out[2]["answer"] == out[0]["answer"] != out[1]["answer"]
    plan = con.explain_last()
    assert "BatchedGenerate" in plan and "llm_calls=2 " in plan  # three rows, two distinct prompts
