"""A model call nobody reads is pruned, and what is left still returns every row (no model runs here).

The plans' shapes are in fixtures/optimizer.sql (unused_generate_*); these run the queries end to end."""
from __future__ import annotations

import pyarrow as pa
import pytest

import sqlm

G = "generate('smollm2', p, max_tokens => 3)"


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = sqlm.connect(tmp_path_factory.mktemp("home"))
    c.register("t", pa.table({"id": [1, 2, 3, 4], "p": ["Say hi", None, "Say hi", "Name a color"]}))
    yield c
    c.close()


@pytest.mark.parametrize("sql, rows", [
    (f"SELECT count(*) AS n FROM (SELECT {G} AS g FROM t)", [{"n": 4}]),
    (f"SELECT 1 AS one FROM (SELECT {G} AS g FROM t)", [{"one": 1}] * 4),
    (f"SELECT count(*) AS n FROM (SELECT id, {G} AS g FROM t WHERE id > 1 LIMIT 2)", [{"n": 2}]),
    (f"SELECT count(*) AS n FROM (SELECT upper(g) AS u FROM (SELECT {G} AS g FROM t))", [{"n": 4}]),
    (f"SELECT count(*) AS n FROM t a CROSS JOIN (SELECT {G} AS g FROM t) b", [{"n": 16}]),
    # unnest() makes rows: its column stays even when unread
    (f"SELECT count(*) AS n FROM (SELECT {G} AS g, unnest([1, 2, 3]) AS u FROM t)", [{"n": 12}]),
], ids=["count", "constant", "where_limit", "nested", "join_side", "unnest"])
def test_unused_model_call_is_pruned_and_rows_survive(con, sql, rows):
    assert con.sql(sql).arrow().to_pylist() == rows
    assert "Generate" not in con.sql(f"EXPLAIN {sql}").arrow().column(0)[0].as_py()


def test_explain_analyze_of_a_pruned_call(con):
    text = con.sql(f"EXPLAIN ANALYZE SELECT count(*) AS n FROM (SELECT {G} AS g FROM t)").arrow().column(0)[0].as_py()
    assert "actual rows=1" in text and "Generate" not in text
