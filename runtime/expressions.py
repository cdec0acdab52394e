"""Vectorized evaluation of bound scalar expressions (sqlglot ASTs) over an Arrow table.

Each node maps to one pyarrow.compute kernel over whole columns; there is no loop
over rows. Columns name the plan's internal columns.

>>> import pyarrow as pa; from sqlglot import parse_one
>>> t = pa.table({"a": [1, 2, 3], "s": ["x", "y", None]})
>>> evaluate(parse_one("a * 2 + 1"), t).to_pylist()
[3, 5, 7]
>>> evaluate(parse_one("'<' || s || '>'"), t).to_pylist()
['<x>', '<y>', None]
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

_COMPARE = {exp.EQ: "equal", exp.NEQ: "not_equal", exp.GT: "greater", exp.GTE: "greater_equal",
            exp.LT: "less", exp.LTE: "less_equal"}
_ARITH = {exp.Add: "add_checked", exp.Sub: "subtract_checked", exp.Mul: "multiply_checked", exp.Mod: None}
_CASTS = {"TEXT": pa.string(), "VARCHAR": pa.string(), "CHAR": pa.string(), "INT": pa.int32(),
          "BIGINT": pa.int64(), "SMALLINT": pa.int16(), "TINYINT": pa.int8(), "DOUBLE": pa.float64(),
          "FLOAT": pa.float32(), "BOOLEAN": pa.bool_(), "DATE": pa.date32(), "DECIMAL": pa.float64()}


class EvaluationError(ValueError):
    """An expression the runtime cannot evaluate on these columns."""


def _as_array(value, length: int) -> pa.Array:
    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    if isinstance(value, pa.Array):
        return value
    scalar = value if isinstance(value, pa.Scalar) else pa.scalar(value)
    return pa.array([scalar.as_py()] * length, type=scalar.type)


def evaluate(e: exp.Expr, table: pa.Table) -> pa.Array:
    """The expression's value for every row of `table`, as one array."""
    return _as_array(_eval(e, table), table.num_rows)


def _text(value):
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value if pa.types.is_string(value.type) or pa.types.is_large_string(value.type) else pc.cast(value, pa.string())
    return pa.scalar(None if value.as_py() is None else str(value.as_py()), pa.string()) if isinstance(value, pa.Scalar) else value


def _nonzero(divisor):
    """The divisor with zeros as NULL: x / 0, x // 0 and x % 0 are NULL, as in DuckDB (not inf, not an error)."""
    return pc.if_else(pc.equal(divisor, 0), pa.scalar(None, divisor.type), divisor)


def _eval(e: exp.Expr, t: pa.Table):  # noqa: C901 - one dispatch table, flat on purpose
    if isinstance(e, exp.Column):
        if e.name not in t.column_names:
            raise EvaluationError(f"column {e.name!r} is not available here")
        return t.column(e.name)
    if isinstance(e, exp.Literal):
        if e.is_string:
            return pa.scalar(e.this, pa.string())
        return pa.scalar(float(e.this) if any(c in e.this for c in ".eE") else int(e.this))
    if isinstance(e, exp.Boolean):
        return pa.scalar(e.this)
    if isinstance(e, exp.Null):
        return pa.scalar(None, pa.null())
    if isinstance(e, exp.Paren):
        return _eval(e.this, t)
    if isinstance(e, exp.Neg):
        return pc.negate_checked(_eval(e.this, t))
    if type(e) in _COMPARE:
        return getattr(pc, _COMPARE[type(e)])(_eval(e.this, t), _eval(e.expression, t))
    if isinstance(e, exp.And):
        return pc.and_kleene(_eval(e.this, t), _eval(e.expression, t))
    if isinstance(e, exp.Or):
        return pc.or_kleene(_eval(e.this, t), _eval(e.expression, t))
    if isinstance(e, exp.Not):
        return pc.invert(_eval(e.this, t))
    if isinstance(e, exp.Div):
        return pc.divide(pc.cast(_eval(e.this, t), pa.float64()), _nonzero(_eval(e.expression, t)))
    if isinstance(e, exp.IntDiv):
        return pc.divide(_eval(e.this, t), _nonzero(_eval(e.expression, t)))
    if isinstance(e, exp.Mod):  # the remainder takes the dividend's sign (truncated division), as in SQL
        a, b = _eval(e.this, t), _nonzero(_eval(e.expression, t))
        remainder = pc.subtract(a, pc.multiply(pc.trunc(pc.divide(pc.cast(a, pa.float64()), b)), b))
        both_integers = pa.types.is_integer(a.type) and pa.types.is_integer(b.type)
        return pc.cast(remainder, a.type) if both_integers else remainder
    if type(e) in _ARITH:
        return getattr(pc, _ARITH[type(e)])(_eval(e.this, t), _eval(e.expression, t))
    if isinstance(e, exp.DPipe):
        return pc.binary_join_element_wise(_text(_eval(e.this, t)), _text(_eval(e.expression, t)), "")
    if isinstance(e, exp.Concat):  # concat() skips NULLs, unlike ||
        parts = [_text(_eval(x, t)) for x in e.expressions]
        return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")
    if isinstance(e, (exp.Like, exp.ILike)):
        pattern = e.expression
        if not (isinstance(pattern, exp.Literal) and pattern.is_string):
            raise EvaluationError("LIKE needs a constant pattern")
        return pc.match_like(_eval(e.this, t), pattern.this, ignore_case=isinstance(e, exp.ILike))
    if isinstance(e, exp.In):
        values = [_eval(v, t) for v in e.expressions]
        if not all(isinstance(v, pa.Scalar) for v in values):
            raise EvaluationError("IN needs a list of constants")
        value_set = pa.array([v.as_py() for v in values])
        return pc.is_in(_eval(e.this, t), value_set=value_set)
    if isinstance(e, exp.Between):
        x = _eval(e.this, t)
        return pc.and_kleene(pc.greater_equal(x, _eval(e.args["low"], t)), pc.less_equal(x, _eval(e.args["high"], t)))
    if isinstance(e, exp.Is):
        if isinstance(e.expression, exp.Null):
            return pc.is_null(_eval(e.this, t))
        raise EvaluationError("IS supports only IS [NOT] NULL")
    if isinstance(e, (exp.Cast, exp.TryCast)):
        target = _CASTS.get(e.to.this.name if hasattr(e.to.this, "name") else str(e.to.this))
        if target is None:
            raise EvaluationError(f"unsupported cast to {e.to.sql()}")
        return pc.cast(_eval(e.this, t), target, safe=isinstance(e, exp.Cast))
    if isinstance(e, exp.Lower):
        return pc.utf8_lower(_eval(e.this, t))
    if isinstance(e, exp.Upper):
        return pc.utf8_upper(_eval(e.this, t))
    if isinstance(e, exp.Length):
        return pc.utf8_length(_eval(e.this, t))
    if isinstance(e, exp.Trim):
        return pc.utf8_trim_whitespace(_eval(e.this, t))
    if isinstance(e, exp.Substring):
        start = _eval(e.args["start"], t).as_py() - 1 if e.args.get("start") else 0
        length = _eval(e.args["length"], t).as_py() if e.args.get("length") else None
        return pc.utf8_slice_codeunits(_eval(e.this, t), start, None if length is None else start + length)
    if isinstance(e, exp.Coalesce):
        return pc.coalesce(_eval(e.this, t), *[_eval(x, t) for x in e.expressions])
    if isinstance(e, exp.Abs):
        return pc.abs(_eval(e.this, t))
    if isinstance(e, exp.Round):
        digits = _eval(e.args["decimals"], t).as_py() if e.args.get("decimals") else 0
        return pc.round(_eval(e.this, t), digits)
    if isinstance(e, exp.If):
        return pc.if_else(_eval(e.this, t), _eval(e.args["true"], t), _eval(e.args.get("false") or exp.Null(), t))
    if isinstance(e, exp.Case):
        result = _eval(e.args.get("default") or exp.Null(), t)
        for branch in reversed(e.args["ifs"]):
            cond = branch.this if e.this is None else exp.EQ(this=e.this, expression=branch.this)
            result = pc.if_else(_as_array(_eval(cond, t), t.num_rows), _eval(branch.args["true"], t), result)
        return result
    raise EvaluationError(f"unsupported expression: {e.sql()}")
