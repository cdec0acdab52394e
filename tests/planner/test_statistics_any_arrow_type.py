"""Planning works over any Arrow schema: a column Arrow cannot hash (nested, union, null-typed) gets statistics too."""
from __future__ import annotations

import datetime
import decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sqlm
from planner.statistics import compute_column_stats

# name -> (two values' array, distinct non-null values)
COLUMNS = {
    "int8": (pa.array([1, None], pa.int8()), 1),
    "uint64": (pa.array([1, 2], pa.uint64()), 2),
    "bool": (pa.array([True, None]), 1),
    "large_string": (pa.array(["a", "a"], pa.large_string()), 1),
    "string_view": (pa.array(["a", "b"], pa.string_view()), 2),
    "binary": (pa.array([b"\xff", b"a"]), 2),
    "fixed_binary": (pa.array([b"ab", b"ab"], pa.binary(2)), 1),
    "decimal": (pa.array([decimal.Decimal("1.5"), None], pa.decimal128(5, 2)), 1),
    "date": (pa.array([datetime.date(2020, 1, 1), datetime.date(2020, 1, 2)]), 2),
    "timestamp_tz": (pa.array([datetime.datetime(2020, 1, 1), None], pa.timestamp("us", tz="UTC")), 1),
    "duration": (pa.array([datetime.timedelta(1), None]), 1),
    "interval": (pa.array([pa.MonthDayNano([1, 2, 3]), None], pa.month_day_nano_interval()), 1),
    "dictionary": (pa.array(["a", "a"]).dictionary_encode(), 1),
    "list": (pa.array([["a", "b"], None]), 1),
    "large_list": (pa.array([[1], []], pa.large_list(pa.int64())), 2),
    "fixed_list": (pa.array([[1, 2], [3, 4]], pa.list_(pa.int64(), 2)), 2),
    "list_view": (pa.array([[1], [2]], pa.list_view(pa.int64())), 2),
    "struct": (pa.array([{"x": 1}, None]), 1),
    "map": (pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())), 1),
    "union": (pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]), 2),
    "null": (pa.array([None, None], pa.null()), 0),
}


@pytest.mark.parametrize("name", COLUMNS)
def test_every_arrow_type_gets_statistics(name):
    values, distinct = COLUMNS[name]
    stats = compute_column_stats(pa.table({name: values}))[name]
    assert stats.rows == 2 and stats.nulls == values.null_count
    assert stats.distinct == distinct  # hashed, counted by text, or (nested, union) every value taken as distinct


NESTED = {"p": pa.array(["Say hi"]), "l": pa.array([["a", "b"]]), "s": pa.array([{"x": 1}]),
          "m": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), "n": pa.array([None], pa.null()),
          "d": pa.array(["x"]).dictionary_encode()}


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = sqlm.connect(tmp_path_factory.mktemp("home"))
    c.register("ty", pa.table(NESTED))
    yield c
    c.close()


@pytest.mark.parametrize("call", ["generate('smollm2', p, max_tokens => 3)", "classify('smollm2', p, ['a', 'b'])"])
def test_model_calls_plan_over_nested_and_null_columns(con, call):
    text = con.sql(f"EXPLAIN SELECT {call} AS g FROM ty").arrow().column(0)[0].as_py()
    assert "Batched" in text


def test_model_calls_plan_over_a_nested_parquet_file(con, tmp_path):
    pq.write_table(pa.table({"p": ["Say hi"], "l": [[1, 2]], "s": [{"x": 1}]}), tmp_path / "x.parquet")
    sql = f"EXPLAIN SELECT generate('smollm2', p, max_tokens => 3) AS g FROM read_parquet('{tmp_path}/x.parquet')"
    assert "BatchedGenerate" in con.sql(sql).arrow().column(0)[0].as_py()
