"""The sqlm dialect parses every statement as a real AST node, and syntax errors carry line and column."""
from __future__ import annotations

import pytest
from sqlglot import exp

from planner.errors import SqlError
from planner.sql import CreateModel, Explain, LLMClassify, LLMGenerate, Reset, Sqlm, parse

STATEMENTS = [
    ("EXPLAIN SELECT 1", Explain),
    ("EXPLAIN ANALYZE SELECT 1", Explain),
    ("EXPLAIN (FORMAT JSON, VERBOSE) SELECT 1", Explain),
    ("EXPLAIN (ANALYZE, FORMAT TEXT) SELECT a FROM t", Explain),
    ("CREATE MODEL m FROM '/models/x.gguf'", CreateModel),
    ("CREATE OR REPLACE MODEL m FROM 'x.gguf' WITH (format = native)", CreateModel),
    ("CREATE TABLE t AS SELECT 1 AS a", exp.Create),
    ("COPY (SELECT 1) TO 'out.parquet' (FORMAT PARQUET)", exp.Copy),
    ("COPY (SELECT 1) TO 'out.csv'", exp.Copy),
    ("SET max_batch_size = 16", exp.Set),
    ("SET prefix_cache = off", exp.Set),
    ("RESET max_batch_size", Reset),
    ("RESET ALL", Reset),
    ("SHOW MODELS", exp.Show),
    ("SHOW TABLES", exp.Show),
    ("SHOW SETTINGS", exp.Show),
    ("DESCRIBE reviews", exp.Describe),
    ("SELECT generate('smollm2', 'Hi ' || name, max_tokens => 8, temperature => 0.5) FROM t", exp.Select),
]


@pytest.mark.parametrize("sql,node", STATEMENTS, ids=[s for s, _ in STATEMENTS])
def test_statement_is_a_real_node(sql, node):
    (statement,) = parse(sql)
    assert isinstance(statement, node)
    assert not any(isinstance(n, exp.Command) for n in statement.walk())


def test_explain_options():
    (e,) = parse("EXPLAIN ANALYZE (FORMAT JSON, VERBOSE) SELECT 1")
    assert (e.args["analyze"], e.args["format"], e.args["verbose"]) == (True, "JSON", True)


def test_llm_calls_have_typed_arguments():
    (s,) = parse("SELECT classify('smollm2', body, ['pos', 'neg'], instruction => 'Label it') FROM t")
    call = s.find(LLMClassify)
    assert call.args["labels"].expressions[1].this == "neg"
    assert call.option("instruction").this == "Label it"
    (g,) = parse("SELECT generate('m', p, max_tokens => 3) FROM t")
    assert g.find(LLMGenerate).option("max_tokens").this == "3"


def test_round_trip():
    sql = "SELECT GENERATE('smollm2', 'Hi ' || name, max_tokens => 8) FROM t"
    assert parse(sql)[0].sql(dialect=Sqlm) == sql


ERRORS = [
    ("SELECT FROM WHERE", 1, 13, "Expected table name"),
    ("SELECT a,\n  b FROM t WHERE (a > 1", 2, 23, "Expecting )"),
    ("SELECT generate('m')", 1, 16, "takes 2 positional arguments"),
    ("SELECT generate('m', 'x', foo => 1)", 1, 27, "unknown argument 'foo'"),
    ("SELECT\n  generate('m', 'x', max_tokens => 3, 'y')", 2, 39, "positional argument after a named one"),
    ("EXPLAIN CREATE TABLE t AS SELECT 1", 1, 34, "EXPLAIN expects a SELECT query"),
    ("EXPLAIN (FORMAT XML) SELECT 1", 1, 17, "FORMAT must be TEXT or JSON"),
    ("FROBNICATE the table", None, None, ""),
]


@pytest.mark.parametrize("sql,line,col,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_syntax_errors_name_problem_and_position(sql, line, col, message):
    with pytest.raises(SqlError) as info:
        statements = parse(sql)
        # a bare expression parses; the connection rejects it as a statement
        assert all(isinstance(s, (exp.Query, exp.Set)) for s in statements), "not a statement"
        raise SqlError("Syntax error", "not a statement")
    assert message in str(info.value)
    if line is not None:
        assert (info.value.line, info.value.col) == (line, col)
