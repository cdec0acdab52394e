"""COPY (SELECT ...) TO 'file': Arrow tables into one Parquet, CSV or JSON-lines file, partition after partition
(the connection writes to a temporary file and renames it into place once every partition is in).

    rows, partitions = write("parquet", "out.parquet.tmp", tables)   # tables: any iterable of pa.Table
    rows, partitions = write("csv", "out.csv.tmp", tables, options={"header": False, "delimiter": ";"})

COPY's options besides FORMAT (DuckDB's names) are checked by `option` before the query runs:

>>> option("csv", "delimiter", ";"), option("parquet", "compression", "uncompressed")
(';', 'none')
>>> option("json", "header", "false")
Traceback (most recent call last):
...
ValueError: COPY option HEADER is not supported for JSON (JSON takes FORMAT only)
"""
from __future__ import annotations

import json
from typing import Iterable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("parquet", "csv", "json")
COMPRESSIONS = ("snappy", "gzip", "zstd", "lz4", "brotli", "uncompressed")


def _boolean(name: str, value: str | None) -> bool:
    text = "true" if value is None else value.lower()  # a bare HEADER means HEADER true
    if text not in ("true", "false", "1", "0", "on", "off"):
        raise ValueError(f"COPY option {name.upper()} must be true or false, got {value!r}")
    return text in ("true", "1", "on")


def _delimiter(name: str, value: str | None) -> str:
    if value is None or len(value) != 1 or not value.isascii() or value in '"\r\n':
        raise ValueError(f"COPY option {name.upper()} must be one ASCII character other than a quote or a line "
                         f"break, got {value!r}")
    return value


def _compression(name: str, value: str | None) -> str:
    text = (value or "").lower()
    if text not in COMPRESSIONS:
        raise ValueError(f"COPY option {name.upper()} must be one of {', '.join(COMPRESSIONS)}, got {value!r}")
    return "none" if text == "uncompressed" else text


def _positive_int(name: str, value: str | None) -> int:
    if value is None or not value.isdigit() or int(value) < 1:
        raise ValueError(f"COPY option {name.upper()} must be a positive integer, got {value!r}")
    return int(value)


# Each format's options, as keyword arguments of its writer below.
OPTIONS = {"csv": {"header": _boolean, "delimiter": _delimiter},
           "parquet": {"compression": _compression, "row_group_size": _positive_int},
           "json": {}}


def option(fmt: str, name: str, value: str | None) -> object:
    """COPY's option `name` (lower case) for `fmt` parsed from its SQL text (None: given without a value)."""
    parse = OPTIONS[fmt].get(name)
    if parse is None:
        takes = ", ".join(["FORMAT", *(n.upper() for n in OPTIONS[fmt])]) + ("" if OPTIONS[fmt] else " only")
        raise ValueError(f"COPY option {name.upper()} is not supported for {fmt.upper()} ({fmt.upper()} takes {takes})")
    return parse(name, value)


def _csv(path: str, schema: pa.Schema, header: bool = True, delimiter: str = ",") -> pacsv.CSVWriter:
    return pacsv.CSVWriter(path, schema, write_options=pacsv.WriteOptions(include_header=header, delimiter=delimiter))


class _Parquet(pq.ParquetWriter):
    def __init__(self, path: str, schema: pa.Schema, compression: str = "snappy", row_group_size: int | None = None):
        super().__init__(path, schema, compression=compression)
        self.row_group_size = row_group_size

    def write_table(self, table: pa.Table) -> None:
        super().write_table(table, row_group_size=self.row_group_size)


class _JsonLines:
    def __init__(self, path: str, schema: pa.Schema):
        self.file = open(path, "w", encoding="utf-8")

    def write_table(self, table: pa.Table) -> None:
        self.file.write("".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in table.to_pylist()))

    def close(self) -> None:
        self.file.close()


_WRITERS = {"parquet": _Parquet, "csv": _csv, "json": _JsonLines}


def write(fmt: str, path: str, tables: Iterable[pa.Table], empty: pa.Schema = pa.schema([]),
          options: dict | None = None) -> tuple[int, int]:
    """(rows, partitions) written to `path`. Later partitions are cast to the first one's schema (a partition whose
    column is all NULL has a null type of its own); `empty`: the schema to write when there is no partition;
    `options`: the format's options parsed by `option`."""
    options = options or {}
    writer, schema, rows, partitions = None, empty, 0, 0
    try:
        for table in tables:
            if writer is None:
                schema, writer = table.schema, _WRITERS[fmt](path, table.schema, **options)
            writer.write_table(table if table.schema == schema else table.cast(schema))
            rows, partitions = rows + table.num_rows, partitions + 1
        if writer is None:  # no rows: the file still says what the columns are
            writer = _WRITERS[fmt](path, schema, **options)
    finally:
        if writer is not None:
            writer.close()
    return rows, partitions
