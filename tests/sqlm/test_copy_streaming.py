"""COPY of a row-wise query over a large source streams it a partition at a time: the same file as running it
whole, progress over all rows, statistics recorded once; anything else (an ORDER BY) runs whole."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sqlm

ROWS = 40
QUERY = ("SELECT id, generate('tiny', 'review ' || body, max_tokens => 4, temperature => 0) AS g "
         "FROM read_parquet('{src}') WHERE id % 5 <> 0")


@pytest.fixture
def con(tmp_path, tiny_llama):
    source = tmp_path / "reviews.parquet"
    pq.write_table(pa.table({"id": list(range(ROWS)), "body": [f"item {i % 7}" for i in range(ROWS)]}), source)
    c = sqlm.connect(tmp_path / "home")
    c.sql(f"CREATE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    c.source = source
    yield c
    c.close()


@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_a_row_wise_copy_streams_in_partitions_and_writes_what_the_whole_query_gives(con, tmp_path, fmt):
    query = QUERY.format(src=con.source)
    whole = con.sql(query).arrow().to_pylist()
    progress = []
    con.on_progress = lambda done, total, tokens: progress.append((done, total))
    con.sql("SET partition_rows = 8")
    target = tmp_path / f"out.{fmt}"
    result = con.sql(f"COPY ({query}) TO '{target}'")
    assert result.message == f"wrote {len(whole)} rows to {target} in 5 partitions of up to 8 rows"
    written = pq.read_table(target).to_pylist() if fmt == "parquet" else \
        [json.loads(line) for line in target.read_text().splitlines()]
    assert written == whole
    assert all(a[0] <= b[0] for a, b in zip(progress, progress[1:]))  # one bar over every partition
    assert progress[-1][0] == progress[-1][1] > 8
    analyzed = con.last_actuals  # summed over the partitions, as EXPLAIN ANALYZE would show them
    generate = next(a for a in analyzed.values() if a.llm is not None)
    per_partition = [{i % 7 for i in range(start, start + 8) if i % 5} for start in range(0, ROWS, 8)]
    assert generate.rows == len(whole)
    assert generate.llm.num_requests == sum(map(len, per_partition))  # identical prompts run once a partition


def test_a_query_that_needs_all_rows_at_once_is_not_streamed(con, tmp_path):
    con.sql("SET partition_rows = 8")
    target = tmp_path / "out.parquet"
    result = con.sql(f"COPY ({QUERY.format(src=con.source)} ORDER BY g, id) TO '{target}'")
    assert "partitions" not in result.message
    assert pq.read_table(target).num_rows == ROWS - ROWS // 5


def test_a_failure_in_a_later_partition_leaves_no_file(con, tmp_path):
    con.sql("SET partition_rows = 8")
    target = tmp_path / "out.parquet"
    with pytest.raises(Exception):
        con.sql(f"COPY (SELECT id, CAST(CASE WHEN id > 30 THEN 'x' ELSE '1' END AS INT) AS n, "
                f"generate('tiny', body, max_tokens => 2) AS g FROM read_parquet('{con.source}')) TO '{target}'")
    assert list(tmp_path.glob("*out.parquet*")) == []
