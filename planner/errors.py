"""The one error type a user sees: what went wrong, and where in the SQL text.

>>> str(SqlError("Binder error", "unknown column 'x'", line=2, col=8))
"Binder error: unknown column 'x' (line 2, column 8)"
"""
from __future__ import annotations

from sqlglot import exp


class SqlError(Exception):
    def __init__(self, kind: str, message: str, line: int | None = None, col: int | None = None,
                 sql: str | None = None) -> None:
        self.kind, self.message, self.line, self.col = kind, message, line, col
        where = f" (line {line}, column {col})" if line is not None and col is not None else ""
        super().__init__(f"{kind}: {message}{where}")


def position(node: exp.Expr | None, sql: str | None) -> tuple[int | None, int | None]:
    """1-based line and column where `node` (or the first positioned node inside it) starts; for a node with
    no position of its own (an empty list `[]`), where its parent starts (`choice => []`: at `choice`)."""
    if node is None or sql is None:
        return None, None
    for candidate in node.walk():
        start = candidate.meta.get("start") if hasattr(candidate, "meta") and candidate.meta else None
        if start is not None:
            line_start = sql.rfind("\n", 0, start) + 1
            return sql.count("\n", 0, start) + 1, start - line_start + 1
    return position(node.parent, sql)


def error_at(kind: str, message: str, node: exp.Expr | None, sql: str | None) -> SqlError:
    line, col = position(node, sql)
    return SqlError(kind, message, line=line, col=col, sql=sql)
