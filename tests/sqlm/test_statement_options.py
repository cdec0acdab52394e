"""SET, COPY, CREATE TABLE and DESCRIBE: every option they accept is honoured, and anything else is refused by
name before a query runs."""
from __future__ import annotations

import errno
import sqlite3
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sqlm
from catalog.settings import MAX_THREADS
from planner.errors import SqlError


@pytest.fixture
def con(tmp_path):
    c = sqlm.connect(tmp_path / "home")
    c.register("t", pa.table({"id": [1, 2, 3], "body": ["bad", "good", "great"]}))
    yield c
    c.close()


# -- SET ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["", "GLOBAL"])
def test_a_set_with_one_bad_item_changes_nothing(con, kind):
    with pytest.raises(SqlError, match="unknown setting 'nope'"):
        con.sql(f"SET {kind} max_batch_size = 4, nope = 2")
    assert con.settings.is_auto("max_batch_size")
    assert con.catalog.settings().is_auto("max_batch_size")
    con.sql(f"SET {kind} max_batch_size = 4, scheduling = spf")
    assert (con.settings.max_batch_size, con.settings.scheduling) == (4, "spf")


@pytest.mark.parametrize("sql,message", [
    ("SET threads = 100000", rf"threads must be auto or 1\.\.{MAX_THREADS}"),
    ("SET GLOBAL threads = 100000", rf"threads must be auto or 1\.\.{MAX_THREADS}"),
    ("SET kv_cache_memory = '100000GB'", "kv_cache_memory must be at most this machine's memory"),
    ("SET kv_cache_memory = '99999999999999999999999'", "kv_cache_memory must be at most this machine's memory"),
])
def test_set_refuses_what_this_machine_cannot_do(con, sql, message):
    with pytest.raises(SqlError, match=message):
        con.sql(sql)
    assert con.sql("SELECT 1 AS x").arrow().to_pylist() == [{"x": 1}]


@pytest.mark.parametrize("error", [OSError(errno.ENOMEM, "Cannot allocate memory"), MemoryError()])
def test_running_out_of_memory_names_kv_cache_memory(con, monkeypatch, error):
    from runtime.executor import Executor

    def run(self, plan):
        raise error
    monkeypatch.setattr(Executor, "run", run)
    con.sql("SET kv_cache_memory = '1GB'")
    with pytest.raises(SqlError, match=r"Out of memory error: .* kv_cache_memory = 1GB \(a smaller SET"):
        con.sql("SELECT id FROM t")


def test_a_catalog_from_a_bigger_machine_still_opens_and_queries(con):
    home = con.catalog.home
    with sqlite3.connect(home / "catalog.db") as db:
        db.execute("INSERT INTO settings VALUES ('threads', '100000')")
    with pytest.warns(UserWarning, match="ignoring the catalog's SET GLOBAL threads"):
        again = sqlm.connect(home)
    assert again.settings.is_auto("threads")
    assert again.sql("SELECT 1 AS x").arrow().to_pylist() == [{"x": 1}]
    again.sql("RESET GLOBAL threads")
    again.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left to warn about
        sqlm.connect(home).close()


# -- COPY -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,text", [
    ("", '"id"\n1\n2\n'),
    ("(HEADER false)", "1\n2\n"),
    ("(HEADER 0, DELIMITER ';')", '1;"bad"\n2;"good"\n'),
    ("(HEADER, DELIMITER '|')", '"id"|"body"\n1|"bad"\n2|"good"\n'),
])
def test_copy_csv_options(con, tmp_path, options, text):
    columns = "id, body" if "DELIMITER" in options else "id"
    con.sql(f"COPY (SELECT {columns} FROM t WHERE id < 3 ORDER BY id) TO '{tmp_path / 'o.csv'}' {options}")
    assert (tmp_path / "o.csv").read_text() == text


def test_copy_parquet_compression_and_row_group_size(con, tmp_path):
    con.sql(f"COPY (SELECT id FROM t ORDER BY id) TO '{tmp_path / 'o.parquet'}' (COMPRESSION zstd, ROW_GROUP_SIZE 2)")
    meta = pq.ParquetFile(tmp_path / "o.parquet").metadata
    assert meta.num_row_groups == 2 and meta.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.parametrize("target,options,message", [
    ("o.csv", "(QUOTE '\"')", r"COPY option QUOTE is not supported for CSV \(CSV takes FORMAT, HEADER, DELIMITER\)"),
    ("o.parquet", "(HEADER false)", "COPY option HEADER is not supported for PARQUET"),
    ("o.json", "(COMPRESSION gzip)", r"COPY option COMPRESSION is not supported for JSON \(JSON takes FORMAT only\)"),
    ("o.csv", "(DELIMITER ';;')", "COPY option DELIMITER must be one ASCII character"),
    ("o.csv", "(HEADER maybe)", "COPY option HEADER must be true or false, got 'maybe'"),
    ("o.parquet", "(COMPRESSION lzma)", "COPY option COMPRESSION must be one of snappy, gzip, zstd"),
    ("o.parquet", "(ROW_GROUP_SIZE 0)", "COPY option ROW_GROUP_SIZE must be a positive integer, got '0'"),
])
def test_copy_refuses_options_it_does_not_take(con, tmp_path, target, options, message):
    with pytest.raises(SqlError, match=message):
        con.sql(f"COPY (SELECT id FROM t) TO '{tmp_path / target}' {options}")
    assert list(tmp_path.glob("o.*")) == []


@pytest.mark.parametrize("target,message", [
    ("{tmp}/no_such_dir/o.csv", "cannot write {tmp}/no_such_dir/o.csv: directory {tmp}/no_such_dir does not exist"),
    ("{tmp}", "cannot write {tmp}: it is a directory"),
])
def test_copy_checks_its_destination_before_running_the_query(con, tmp_path, target, message):
    target, message = target.format(tmp=tmp_path), message.format(tmp=tmp_path)
    # the query would fail while running: the destination's error comes first
    with pytest.raises(SqlError, match=f"IO error: {message}"):
        con.sql(f"COPY (SELECT CAST(body AS INT) AS n FROM t) TO '{target}'")


# -- CREATE TABLE ---------------------------------------------------------------------------------------------

def test_create_table_if_not_exists_keeps_the_table(con):
    con.sql("CREATE TABLE c AS SELECT 1 AS a")
    result = con.sql("CREATE TABLE IF NOT EXISTS c AS SELECT CAST(body AS INT) AS a FROM t")  # not even run
    assert result.message == "table c already exists (nothing created)"
    assert con.sql("SELECT a FROM c").arrow().to_pylist() == [{"a": 1}]
    with pytest.raises(SqlError, match="table 'c' already exists"):
        con.sql("CREATE TABLE c AS SELECT 2 AS a")


def test_create_temp_table_lives_in_this_connection_only(con):
    assert con.sql("CREATE TEMP TABLE tmp AS SELECT id FROM t WHERE id > 1").message == \
        "created temporary table tmp (2 rows)"
    assert con.sql("SELECT count(*) AS n FROM tmp").arrow().to_pylist() == [{"n": 2}]
    assert con.catalog.get_table("tmp") is None and list((con.catalog.home / "tables").iterdir()) == []
    with pytest.raises(SqlError, match="table 'tmp' already exists"):
        con.sql("CREATE TEMPORARY TABLE tmp AS SELECT 1 AS id")
    con.sql("CREATE OR REPLACE TEMP TABLE tmp AS SELECT 7 AS id")
    assert con.sql("SELECT id FROM tmp").arrow().to_pylist() == [{"id": 7}]
    other = sqlm.connect(con.catalog.home)
    with pytest.raises(SqlError, match="unknown table 'tmp'"):
        other.sql("SELECT * FROM tmp")
    other.close()


@pytest.mark.parametrize("sql", ["CREATE TABLE t AS SELECT 42 AS x", "CREATE OR REPLACE TABLE t AS SELECT 42 AS x"])
def test_create_table_refuses_a_name_this_connection_registered(con, sql):
    with pytest.raises(SqlError, match="table 't' is this connection's own .*would be hidden by it"):
        con.sql(sql)
    assert con.catalog.get_table("t") is None
    assert con.sql("SELECT count(*) AS n FROM t").arrow().to_pylist() == [{"n": 3}]


# -- DESCRIBE -------------------------------------------------------------------------------------------------

def test_describe_finds_a_built_in_model_before_its_first_use(con, tiny_llama, monkeypatch):
    import catalog.registry

    monkeypatch.setattr(catalog.registry, "builtin_models", lambda: {"tinyb": tiny_llama.gguf_path})
    assert con.catalog.get_model("tinyb") is None
    described = dict(zip(*con.sql("DESCRIBE tinyb").arrow().to_pydict().values()))
    assert described["format"] == "gguf" and described["path"] == str(tiny_llama.gguf_path)
    with pytest.raises(SqlError, match=r"unknown table 'nope'; unknown model 'nope' \(known: tinyb"):
        con.sql("DESCRIBE nope")
