"""COPY (SELECT ...) TO 'file': Arrow tables into one Parquet, CSV or JSON-lines file, partition after partition
(the connection writes to a temporary file and renames it into place once every partition is in).

    rows, partitions = write("parquet", "out.parquet.tmp", tables)   # tables: any iterable of pa.Table
"""
from __future__ import annotations

import json
from typing import Iterable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("parquet", "csv", "json")


class _JsonLines:
    def __init__(self, path: str, schema: pa.Schema):
        self.file = open(path, "w", encoding="utf-8")

    def write_table(self, table: pa.Table) -> None:
        self.file.write("".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in table.to_pylist()))

    def close(self) -> None:
        self.file.close()


_WRITERS = {"parquet": pq.ParquetWriter, "csv": pacsv.CSVWriter, "json": _JsonLines}


def write(fmt: str, path: str, tables: Iterable[pa.Table], empty: pa.Schema = pa.schema([])) -> tuple[int, int]:
    """(rows, partitions) written to `path`. Later partitions are cast to the first one's schema (a partition whose
    column is all NULL has a null type of its own); `empty`: the schema to write when there is no partition."""
    writer, schema, rows, partitions = None, empty, 0, 0
    try:
        for table in tables:
            if writer is None:
                schema, writer = table.schema, _WRITERS[fmt](path, table.schema)
            writer.write_table(table if table.schema == schema else table.cast(schema))
            rows, partitions = rows + table.num_rows, partitions + 1
        if writer is None:  # no rows: the file still says what the columns are
            writer = _WRITERS[fmt](path, schema)
    finally:
        if writer is not None:
            writer.close()
    return rows, partitions
