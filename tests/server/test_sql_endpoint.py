"""POST /v1/sql: the CLI's SQL over HTTP, as JSON rows or an Arrow IPC stream."""
from __future__ import annotations

import httpx
import pytest
import pyarrow as pa

from serving_helpers import TINY


def sql(server, query: str, **headers) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/sql", json={"query": query}, headers=headers, timeout=120)


def test_rows_as_json(tiny_server):
    r = sql(tiny_server, "SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'c')) AS t(id, name) WHERE id >= 2 ORDER BY id")
    assert r.status_code == 200
    body = r.json()
    assert [c["name"] for c in body["columns"]] == ["id", "name"]
    assert body["rows"] == [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    assert body["num_rows"] == 2


def test_rows_as_arrow_ipc(tiny_server):
    r = sql(tiny_server, "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(id, name)",
            accept="application/vnd.apache.arrow.stream")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.column_names == ["id", "name"]
    assert table.to_pylist() == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_generate_through_sql_matches_the_chat_endpoint(tiny_server, tiny_llama):
    assert sql(tiny_server, f"CREATE OR REPLACE MODEL {TINY} FROM '{tiny_llama.hf_dir}'").status_code == 200
    r = sql(tiny_server, f"SELECT generate('{TINY}', 'the quick brown fox', max_tokens => 12, temperature => 0) AS g")
    assert r.status_code == 200, r.text
    chat = tiny_server.client().chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "the quick brown fox"}], max_tokens=12, temperature=0)
    assert r.json()["rows"] == [{"g": chat.choices[0].message.content}]


def test_explain(tiny_server):
    r = sql(tiny_server, "EXPLAIN SELECT id FROM (VALUES (1), (2)) AS t(id) WHERE id > 1")
    assert r.status_code == 200
    plan = r.json()["rows"][0]["explain"]
    assert "Relational" in plan and "duckdb" in plan and "WHERE id > 1" in plan


def test_sql_errors_are_400_with_the_position(tiny_server):
    r = sql(tiny_server, "SELEC 1")
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "sql_error" and "line 1" in error["message"]
    r = sql(tiny_server, "SELECT generate('no_such_model', 'x') AS g")
    assert r.status_code == 400
    assert "no_such_model" in r.json()["error"]["message"]
    assert httpx.post(f"{tiny_server.url}/v1/sql", json={}).status_code == 400


def test_json_rows_have_no_nan_or_infinity(tiny_server):
    """JSON has neither (JavaScript's JSON.parse rejects them): such floats are null; Arrow keeps them."""
    import json

    r = httpx.post(f"{tiny_server.url}/v1/sql", json={"query": "SELECT 1/0 AS a, 0.0/0 AS b, 1.5::DOUBLE AS c"}, timeout=30)
    assert r.status_code == 200
    assert json.loads(r.text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))["rows"] == [
        {"a": None, "b": None, "c": 1.5}]


def test_a_temp_table_lasts_only_for_its_request(tiny_server):
    url = f"{tiny_server.url}/v1/sql"
    assert httpx.post(url, json={"query": "CREATE TEMP TABLE scratch AS SELECT 1 AS a"}, timeout=30).status_code == 200
    for _ in range(3):  # whichever worker connection runs it
        r = httpx.post(url, json={"query": "SELECT * FROM scratch"}, timeout=30)
        assert r.status_code == 400 and "scratch" in r.text
