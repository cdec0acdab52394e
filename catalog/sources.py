"""Table sources a query can name: registered tables, files, in-memory Arrow tables.

A source is opened lazily for its schema; rows are read by the executor. The
fingerprint (path, size, mtime) keys the column statistics cached in the catalog.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq


FILE_KINDS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json",
              ".jsonl": "json", ".ndjson": "json"}


@dataclass(frozen=True)
class TableSource:
    """Where a Scan's rows come from."""
    kind: str  # 'parquet' | 'csv' | 'json' | 'arrow' (registered in memory) | 'values' | 'request' (online, never scanned)
    location: str  # path, registered name, or a label for VALUES
    schema: pa.Schema = field(compare=False)
    table: pa.Table | None = field(default=None, compare=False, repr=False)  # for 'arrow' and 'values'
    row_count: int | None = None
    fingerprint: str = ""  # keys column statistics in the catalog


class SourceError(ValueError):
    """A file that does not exist or cannot be read as the format it claims."""


def kind_of(path: str) -> str | None:
    return FILE_KINDS.get(Path(path).suffix.lower())


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def read_file(kind: str, path: str | Path) -> pa.Table:
    path = Path(path)
    try:
        if kind == "parquet":
            return pq.read_table(path)
        if kind == "csv":
            opts = pacsv.ParseOptions(delimiter="\t") if path.suffix.lower() == ".tsv" else pacsv.ParseOptions()
            return pacsv.read_csv(path, parse_options=opts)
        if kind == "json":
            return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"cannot read {path} as {kind}: {e}") from None
    raise SourceError(f"unknown file kind {kind!r}")


def file_source(kind: str, path: str) -> TableSource:
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"file not found: {path}")
    if kind == "parquet":
        try:
            meta = pq.read_metadata(p)
            schema = pq.read_schema(p)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"cannot read {path} as parquet: {e}") from None
        return TableSource("parquet", str(p), schema, row_count=meta.num_rows, fingerprint=_fingerprint(p))
    table = read_file(kind, p)  # CSV/JSON have no footer: reading is the only way to the schema
    return TableSource(kind, str(p), table.schema, table=table, row_count=table.num_rows, fingerprint=_fingerprint(p))


def arrow_source(name: str, table: pa.Table) -> TableSource:
    return TableSource("arrow", name, table.schema, table=table, row_count=table.num_rows,
                       fingerprint=f"arrow:{name}:{id(table)}:{table.num_rows}")


def load(source: TableSource, columns: tuple[str, ...]) -> pa.Table:
    """The rows of `source`, only `columns`, in the source's order."""
    if source.table is not None:
        return source.table.select(list(columns))
    if source.kind == "parquet":
        return pq.read_table(source.location, columns=list(columns))
    return read_file(source.kind, source.location).select(list(columns))


def registered_file(path: str) -> tuple[str, int, dict]:
    """(kind, row count, schema) of a file being registered as a table."""
    kind = kind_of(path)
    if kind is None:
        raise SourceError(f"cannot tell the format of {path}: expected .parquet, .csv or .json")
    src = file_source(kind, os.fspath(path))
    return kind, src.row_count or 0, {f.name: str(f.type) for f in src.schema}
