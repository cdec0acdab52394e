"""What con.sql() returns: an Arrow table with conveniences."""
from __future__ import annotations

import pyarrow as pa

from sqlm.format import table_text


class Result:
    def __init__(self, table: pa.Table, message: str | None = None) -> None:
        self._table = table
        self.message = message  # e.g. "created table t (12 rows)" for statements without rows

    def arrow(self) -> pa.Table:
        return self._table

    def df(self):
        return self._table.to_pandas()  # needs pandas; pyarrow raises a clear ImportError without it

    def fetchall(self) -> list[tuple]:
        cols = [c.to_pylist() for c in self._table.columns]
        return list(zip(*cols))

    def show(self, max_rows: int = 40) -> None:
        print(str(self) if self._table.num_columns or not self.message else self.message)

    def __len__(self) -> int:
        return self._table.num_rows

    def __str__(self) -> str:
        return table_text(self._table) if self._table.num_columns else (self.message or "")

    __repr__ = __str__
