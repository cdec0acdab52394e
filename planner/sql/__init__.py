"""SQL text -> sqlglot AST in the `sqlm` dialect, with errors that carry line and column."""
from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, TokenError

from planner.errors import SqlError
from planner.sql.dialect import Sqlm
from planner.sql.nodes import CreateModel, Explain, LLMCall, LLMClassify, LLMGenerate, Reset

__all__ = ["parse", "Sqlm", "CreateModel", "Explain", "LLMCall", "LLMClassify", "LLMGenerate", "Reset"]

_TOKEN_REPR = re.compile(r"<Token token_type: [\w.]+, text: (.*?), line: \d+.*?>")


MAX_NESTING = 32  # parentheses deep: past any real query; sqlglot's recursive descent overflows Python's stack at ~45


def _check_nesting(sql: str) -> None:
    """Refuse text nested deeper than MAX_NESTING before the recursive-descent parser recurses into it."""
    depth, quote = 0, None
    line, col = 1, 0
    for ch in sql:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        if quote is not None:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise SqlError("Syntax error", f"expression nested too deeply (more than {MAX_NESTING} levels of "
                               "parentheses)", line=line, col=col, sql=sql)
        elif ch == ")":
            depth -= 1


def parse(sql: str) -> list[exp.Expr]:
    """Every statement in `sql`; a syntax error raises SqlError with the line and column."""
    _check_nesting(sql)
    try:
        statements = sqlglot.parse(sql, read=Sqlm, error_level=ErrorLevel.IMMEDIATE)
    except ParseError as e:
        first = e.errors[0] if e.errors else {}
        # sqlglot reports the column where the offending token ends; users want where it starts
        col = first.get("col")
        if col is not None and first.get("highlight"):
            col = max(1, col - len(first["highlight"]) + 1)
        message = _TOKEN_REPR.sub(lambda m: repr(m.group(1)), first.get("description") or str(e))
        raise SqlError("Syntax error", message, line=first.get("line"), col=col, sql=sql) from None
    except TokenError as e:
        raise SqlError("Syntax error", str(e), sql=sql) from None
    except RecursionError:
        raise SqlError("Syntax error", "expression nested too deeply", sql=sql) from None
    statements = [s for s in statements if s is not None]
    if not statements:
        raise SqlError("Syntax error", "empty statement", sql=sql)
    return statements
