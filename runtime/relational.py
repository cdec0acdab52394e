"""The relational engine: DuckDB over Arrow, one in-memory connection per statement.

sqlm plans the model calls; every relational operator (scans, filters, projections,
joins, aggregates, windows, set operations, subqueries, sorts, limits, casts and
scalar functions) runs in DuckDB, with DuckDB's semantics for NULLs and types.
Catalog tables and the Arrow outputs of model calls are registered as named
relations, never copied. The connection cannot touch the file system or the
network (`enable_external_access = false`, with `allowed_paths` the Parquet files of
the catalog's sources, which DuckDB's own reader scans): a query reads only what
sqlm's catalog, under its policy, registered.

>>> import pyarrow as pa
>>> with RelationalSession() as db:
...     db.register("t", pa.table({"x": [1, 2, None]}))
...     db.query('SELECT count(*) AS n, sum(x) AS s FROM t').to_pylist()
[{'n': 3, 's': 3}]
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from catalog.sources import TableSource


class RelationalError(ValueError):
    """DuckDB refused a query or failed while running it. `position` is a character offset into the
    SQL text it was given (None where DuckDB names no place)."""

    def __init__(self, message: str, position: int | None = None, kind: str = "Execution"):
        super().__init__(message)
        self.message, self.position, self.kind = message, position, kind


def _translate(e: duckdb.Error) -> RelationalError:
    """DuckDB's error (JSON with errors_as_json) as a RelationalError that names the problem and its place."""
    text = str(e)
    head, _, body = text.partition(": ")
    try:
        info = json.loads(body)
    except ValueError:
        return RelationalError(text)
    position = info.get("position")
    kind = info.get("exception_type") or head.replace(" Error", "")
    return RelationalError(info.get("exception_message", text), int(position) if position else None, kind)


def source_relation(source: TableSource):
    """What DuckDB scans for a catalog source it was not allowed to open itself: the in-memory table, or a lazy
    Arrow dataset of the Parquet file (DuckDB pushes projections and filters into it)."""
    if source.table is not None:
        return source.table
    if source.kind == "parquet":
        return ds.dataset(source.location, format="parquet")
    raise ValueError(f"source {source.kind}:{source.location} has no rows to scan")


def _plain_integers(table: pa.Table) -> pa.Table:
    """HUGEINT columns (sum of integers: Arrow decimal128(38, 0)) as int64 where the values fit, as
    DuckDB's own Python client returns ints for them."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type) and f.type.scale == 0 and f.type.precision == 38:
            try:
                table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
            except pa.ArrowInvalid:
                pass  # beyond int64: stays exact as a decimal
    return table


_DATABASES: OrderedDict[tuple, duckdb.DuckDBPyConnection] = OrderedDict()
_DATABASES_LOCK = threading.Lock()
_MAX_DATABASES = 8


def _database(threads: int, files: tuple[str, ...]) -> duckdb.DuckDBPyConnection:
    """A DuckDB database that can open exactly `files` (nothing else, ever: external access is switched off
    after allowed_paths is set, and cannot be switched back on). Opening one costs ~13 ms, a cursor on it ~0, so
    each (threads, files) pair is opened once per process; statements get cursors (their own connections, with
    their own temporary views)."""
    key = (threads, files)
    with _DATABASES_LOCK:
        if key in _DATABASES:
            _DATABASES.move_to_end(key)
            return _DATABASES[key]
        db = duckdb.connect(":memory:", config={"errors_as_json": True, "threads": threads})
        if files:
            db.execute("SET allowed_paths = ?", [list(files)])
        db.execute("SET enable_external_access = false")
        _DATABASES[key] = db
        if len(_DATABASES) > _MAX_DATABASES:
            _DATABASES.popitem(last=False)[1].close()
        return db


class RelationalSession:
    """One DuckDB connection: register relations, run queries to Arrow."""

    def __init__(self, threads: int | None = None, sources=(), con: duckdb.DuckDBPyConnection | None = None) -> None:
        """sources: the catalog sources it may scan; their Parquet files are the only paths it can open."""
        files = tuple(sorted({s.location for s in sources if s.table is None and s.kind == "parquet"}))
        self.con = con if con is not None else _database(threads or os.cpu_count() or 1, files).cursor()
        self.files = set(files)

    def side(self) -> RelationalSession:
        """Another connection to the same database, with its own relations: it runs queries while `stream` of this
        one is being read (a query on a connection ends the result that connection was streaming)."""
        side = RelationalSession(con=self.con.cursor())
        side.files = self.files
        return side

    def stream(self, sql: str, rows: int):
        """The result of `sql` as Arrow tables of up to `rows` rows, read as they are consumed: a source larger
        than memory passes through a partition at a time."""
        try:
            reader = self.con.sql(sql).to_arrow_reader(rows)
            for batch in reader:
                yield _plain_integers(pa.Table.from_batches([batch]))
        except duckdb.Error as e:
            raise _translate(e) from None

    def register(self, name: str, relation) -> None:
        """relation: a pyarrow Table or Dataset, or a catalog TableSource (a Parquet file is scanned by DuckDB's
        own reader: parallel, with projection and filter pushdown). Each name is registered once."""
        try:
            if isinstance(relation, TableSource) and relation.table is None and relation.location in self.files:
                path = relation.location.replace("'", "''")
                self.con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM read_parquet(\'{path}\')')
                return
            self.con.register(name, source_relation(relation) if isinstance(relation, TableSource) else relation)
        except duckdb.Error as e:
            raise _translate(e) from None

    def query(self, sql: str) -> pa.Table:
        try:
            return _plain_integers(self.con.sql(sql).to_arrow_table())
        except duckdb.Error as e:
            raise self._located(sql, e) from None

    def _located(self, sql: str, error: duckdb.Error) -> RelationalError:
        """The relation API drops the error's position: the DB-API path reports it (error path only)."""
        try:
            self.con.execute(sql)
        except duckdb.Error as e:
            return _translate(e)
        return _translate(error)

    def schema(self, sql: str) -> pa.Schema:
        """The result schema of `sql`, bound and checked but not run."""
        prefix = "SELECT * FROM ("
        try:
            return self.query(f"{prefix}{sql}) AS q LIMIT 0").schema
        except RelationalError as e:
            if e.position is not None:
                e.position = max(0, e.position - len(prefix))
            raise

    def explain(self, sql: str) -> tuple[float | None, str]:
        """DuckDB's plan of `sql`: its estimate of the result's rows (None when it gives none) and the operator
        tree as one line, root first (`PROJECTION <- HASH_GROUP_BY <- (TABLE_SCAN, TABLE_SCAN)`)."""
        try:
            plan = json.loads(self.con.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchall()[0][1])
        except (duckdb.Error, ValueError, IndexError):
            return None, ""
        if not plan:
            return None, ""

        def outline(node: dict) -> str:
            children = [outline(c) for c in node.get("children", [])]
            below = "" if not children else f" <- {children[0]}" if len(children) == 1 else \
                f" <- ({', '.join(children)})"
            return node.get("name", "?").strip() + below
        value = plan[0].get("extra_info", {}).get("Estimated Cardinality")
        try:
            rows = float(value)
        except (TypeError, ValueError):
            rows = None
        return rows, outline(plan[0])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> RelationalSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
