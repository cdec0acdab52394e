"""Arrow tables as text: a boxed table for people, CSV and JSON lines for programs."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.csv as pacsv

MAX_CELL = 60


def _cell(v) -> str:
    s = "NULL" if v is None else str(v)
    s = s.replace("\n", "\\n")
    return s if len(s) <= MAX_CELL else s[: MAX_CELL - 1] + "…"


def table_text(table: pa.Table, max_rows: int = 40) -> str:
    names = table.column_names
    shown = table.slice(0, max_rows).to_pylist()
    rows = [[_cell(r[n]) for n in names] for r in shown]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(n.ljust(w) for n, w in zip(names, widths)) + " |", line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    out.append(line)
    if table.num_rows > max_rows:
        out.append(f"({table.num_rows} rows, {max_rows} shown)")
    else:
        out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)


def table_csv(table: pa.Table) -> str:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    return buf.getvalue().decode()


def table_json(table: pa.Table) -> str:
    return "\n".join(json.dumps(row, default=str, ensure_ascii=False) for row in table.to_pylist())
