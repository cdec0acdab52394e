"""A query with model calls binds every clause it holds as DuckDB reads it, or refuses the clause by name and
position: never a silently different answer.

The oracle for answers is DuckDB over the same text, each generate(p) a lookup of the model's answer for p.
"""
from __future__ import annotations

import re
from collections import Counter

import duckdb
import pyarrow as pa
import pytest

import sqlm
from planner.errors import SqlError

T = pa.table({"id": [1, 2, 3, 4], "p": ["Say hi", None, "Say hi", "Name a color"], "n": [1, 2, None, 4]})
U = pa.table({"id": [1, 3, 3, 5], "tag": ["a", "b", "c", "d"]})
T_DICT = T.set_column(1, "p", T["p"].dictionary_encode())  # as a pandas categorical arrives
G = "generate('tiny', p, max_tokens => 2)"

ANSWERED_AS_DUCKDB_DOES = [
    # SEMI / ANTI keep each left row once, with (without) a match, and none of the right's columns
    f"SELECT t.id, {G} AS g FROM t SEMI JOIN u ON t.id = u.id",
    f"SELECT t.id, {G} AS g FROM t ANTI JOIN u ON t.id = u.id",
    f"SELECT id, {G} AS g FROM t ANTI JOIN u USING (id)",
    f"SELECT t.id, {G} AS g FROM t SEMI JOIN u ON t.id = u.id AND u.tag > 'b'",
    f"SELECT *, {G} AS g FROM t ANTI JOIN (VALUES (1), (2)) v(id) USING (id)",
    # USING and NATURAL: one column of the name, COALESCE'd for a FULL join; t.id and u.id still reachable
    f"SELECT *, {G} AS g FROM t JOIN u USING (id)",
    f"SELECT id, t.id AS tid, u.id AS uid, {G} AS g FROM t FULL JOIN u USING (id)",
    f"SELECT *, {G} AS g FROM t NATURAL JOIN u",
    f"SELECT *, {G} AS g FROM t RIGHT JOIN u USING (id)",
    f"SELECT u.*, {G} AS g FROM t LEFT JOIN u USING (id)",
    f"SELECT *, {G} AS g FROM (SELECT tag, id FROM u) x JOIN t USING (id)",
    # BY NAME: columns matched by name, a missing one NULL
    f"SELECT id, {G} AS g FROM t WHERE id < 3 UNION ALL BY NAME SELECT 'x' AS g, 9 AS id",
    f"SELECT id, {G} AS g FROM t WHERE id < 3 UNION ALL BY NAME SELECT 'new' AS extra",
    # FETCH FIRST is LIMIT
    f"SELECT id, {G} AS g FROM t ORDER BY id FETCH FIRST 2 ROWS ONLY",
    f"SELECT id, {G} AS g FROM t ORDER BY id OFFSET 1 ROWS FETCH NEXT 2 ROWS ONLY",
    # with GROUP BY a call over the group keys (or aggregates) runs once per group; FILTER stays an aggregate's
    f"SELECT p, {G} AS g, count(*) AS c FROM t GROUP BY p",
    f"SELECT p, count(*) AS c FROM t GROUP BY p HAVING {G} IS NOT NULL",
    "SELECT generate('tiny', 'Join: ' || string_agg(p, ', ' ORDER BY id), max_tokens => 2) AS g FROM t",
    f"SELECT count(*) FILTER (WHERE {G} IS NOT NULL) AS c, count(*) FILTER (WHERE n > 1) AS big FROM t",
    # prompts from a dictionary-encoded (a pandas categorical) or string_view column
    f"SELECT id, {G} AS g FROM t_dict ORDER BY id",
    # an output alias inside an ORDER BY expression
    f"SELECT id, {G} AS g FROM t ORDER BY g COLLATE nocase, id",
    # what a model query cannot hold, in a subquery without model calls: DuckDB runs that subquery
    f"SELECT s.id, {G} AS g FROM t JOIN (SELECT t.id FROM t ASOF JOIN u ON t.id >= u.id) s ON s.id = t.id",
    f"SELECT s.id, {G} AS g FROM t JOIN (SELECT id FROM u ORDER BY id LIMIT 50 PERCENT) s ON s.id = t.id",
]

REFUSED = [  # (query, what the error says, the text at the position it gives)
    (f"SELECT t.id, {G} FROM t ASOF JOIN u ON t.id >= u.id", "ASOF JOIN is not supported in a query with model",
     "u ON t.id"),
    (f"SELECT t.id, {G} FROM t POSITIONAL JOIN u", "POSITIONAL JOIN is not supported", "u"),
    (f"SELECT t.id, {G} FROM t\nJOIN u ON u.tag = generate('tiny', p)",
     r"generate\(\) is not supported in a JOIN condition", "'tiny', p)"),
    (f"SELECT t.id FROM t SEMI JOIN (SELECT id, {G} AS g FROM t) s ON s.id = t.id",
     "SEMI JOIN over a query with model calls is not supported", "s ON"),
    (f"SELECT {G} FROM t NATURAL JOIN (SELECT 1 AS z) s", "NATURAL JOIN: the two sides have no column name in common",
     "s"),
    (f"SELECT id, {G} FROM t ORDER BY id LIMIT 20 PERCENT", "PERCENT is not supported in a query with model",
     "20 PERCENT"),
    (f"SELECT id, {G} FROM t ORDER BY id FETCH FIRST 20 PERCENT ROWS ONLY", "PERCENT is not supported", "20 PERCENT"),
    (f"SELECT id, {G} FROM t ORDER BY p LIMIT 2 WITH TIES", "WITH TIES is not supported", "2 WITH TIES"),
    (f"SELECT id, {G} FROM t USING SAMPLE 3 ROWS", "USING SAMPLE / TABLESAMPLE is not supported", "3 ROWS"),
    (f"SELECT id, {G} FROM t TABLESAMPLE (3 ROWS)", "USING SAMPLE / TABLESAMPLE is not supported", "3 ROWS"),
    # a name the user cannot write never shows: the model call is named as written
    (f"SELECT p, {G} FROM t WHERE {G} IS NOT NULL GROUP BY p",
     r"generate\('tiny', p, max_tokens => 2\) must appear in GROUP BY or inside an aggregate", "'tiny'"),
    (f"SELECT id, {G} AS g FROM t ORDER BY nope COLLATE nocase", r"unknown column 'nope' \(available: id, n, p\)",
     "nope"),
    # a LIMIT below unnest() would count rows before it makes more
    (f"SELECT id, {G}, unnest([1, 2, 3]) AS x FROM t LIMIT 2", r"unnest\(\) in the select list with ORDER BY",
     "unnest("),
]

ARGUMENT_ERRORS = [  # (the call, what the error says, the text at the position it gives)
    ("generate('tiny', p, stop => NULL)", "stop must be string or list of strings, got NULL", "NULL"),
    ("generate('tiny', p, stop => 3)", "stop must be string or list of strings, got 3", "3"),
    ("generate('tiny', p, stop => ['a', 3])", r"stop must be string or list of strings, got \['a', 3\]", "3]"),
    ("generate('tiny', p, max_tokens => NULL)", "max_tokens must be integer, got NULL", "NULL"),
    ("generate('tiny', p, max_tokens => 2.5)", "max_tokens must be integer, got 2.5", "2.5"),
    ("generate('tiny', p, temperature => 'hot')", "temperature must be number, got 'hot'", "'hot'"),
    ("generate('tiny', p, seed => NULL)", "seed must be integer, got NULL", "NULL"),
    ("generate('tiny', p, chat => 1)", "chat must be boolean, got 1", "1"),
    ("generate('tiny', p, choice => [])", "choice must be a non-empty list of strings", "[]"),
    ("generate('tiny', p, choice => ['a', 1])", r"choice must be list of strings, got \['a', 1\]", "1]"),
    ("generate('tiny', p, regex => ['a'])", r"regex must be string, got \['a'\]", "'a']"),
    ("classify('tiny', p, [])", "labels must be a list of strings", "[]"),
    ("classify('tiny', p, ['a', 'b'], instruction => NULL)", "instruction must be string, got NULL", "NULL"),
    # beam search reads only beam_width, max_tokens, length_penalty and n
    ("generate('tiny', p, beam_width => 2, stop => 'x')", "stop cannot be combined with beam_width", "'x'"),
    ("generate('tiny', p, beam_width => 2, choice => ['a', 'b'])", "choice cannot be combined with beam_width", "'a'"),
    ("generate('tiny', p, beam_width => 2, regex => 'a+')", "regex cannot be combined with beam_width", "'a+'"),
    ("generate('tiny', p, beam_width => 2, temperature => 0.7)", "temperature cannot be combined", "0.7"),
    ("generate('tiny', p, top_k => 5, beam_width => 2)", "top_k cannot be combined with beam_width", "5"),
    ("generate('tiny', p, beam_width => 2, top_p => 0.9)", "top_p cannot be combined with beam_width", "0.9"),
    ("generate('tiny', p, beam_width => 2, min_p => 0.1)", "min_p cannot be combined with beam_width", "0.1"),
    ("generate('tiny', p, beam_width => 2, seed => 1)", "seed cannot be combined with beam_width", "1"),
    ("generate('tiny', p, beam_width => 2, repetition_penalty => 1.2)", "repetition_penalty cannot be combined", "1.2"),
    ("generate('tiny', p, beam_width => 2, presence_penalty => 0.5)", "presence_penalty cannot be combined", "0.5"),
    ("generate('tiny', p, length_penalty => 0.5)", "length_penalty ranks beams: it needs beam_width > 1", "0.5"),
]

ACCEPTED_OPTIONS = ["beam_width => 2, temperature => 0", "beam_width => 2, length_penalty => 0.5, n => 2",
                    "stop => []", "stop => ['a', 'b']", "temperature => 1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_llama):
    con = sqlm.connect(tmp_path_factory.mktemp("bind_model_queries"))
    con.register("t", T)
    con.register("u", U)
    con.register("t_dict", T_DICT)
    con.sql(f"CREATE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    yield con
    con.close()


ANSWERS: dict[str, str] = {}  # prompt -> the model's answer, generated alone
CALL = re.compile(r"generate\('tiny', (.+?), max_tokens => 2\)")


def oracle(tiny, query: str) -> pa.Table:
    """DuckDB's answer, each generate(p) a scalar function that asks the model for p alone."""
    def answer(prompt: str) -> str:
        if prompt not in ANSWERS:
            literal = prompt.replace("'", "''")
            ANSWERS[prompt] = tiny.sql(f"SELECT generate('tiny', '{literal}', max_tokens => 2)").arrow()[0][0].as_py()
        return ANSWERS[prompt]

    duck = duckdb.connect(config={"threads": 1})
    duck.register("t", T)
    duck.register("u", U)
    duck.register("t_dict", T_DICT)
    duck.create_function("oracle_generate", answer, ["VARCHAR"], "VARCHAR", side_effects=False)
    return duck.sql(CALL.sub(lambda m: f"oracle_generate({m.group(1)})", query)).to_arrow_table()


def rows(table: pa.Table) -> list[tuple]:
    return [tuple(r.values()) for r in table.to_pylist()]


@pytest.mark.parametrize("query", ANSWERED_AS_DUCKDB_DOES)
def test_answered_as_duckdb_answers(tiny, query):
    got, want = tiny.sql(query).arrow(), oracle(tiny, query)
    assert got.column_names == want.column_names
    if " ORDER BY id" in query:  # a total order: the same rows in the same order
        assert rows(got) == rows(want)
    else:
        assert Counter(rows(got)) == Counter(rows(want))


def at(sql: str, error: SqlError) -> str:
    """The SQL text from the error's position on."""
    return sql.split("\n")[error.line - 1][error.col - 1:]


@pytest.mark.parametrize("query,message,where", REFUSED, ids=[r[1][:40] for r in REFUSED])
def test_refused_by_name_and_position(tiny, query, message, where):
    with pytest.raises(SqlError, match=message) as info:
        tiny.sql(query)
    assert at(query, info.value).startswith(where)
    assert "__" not in str(info.value)  # never an internal name


@pytest.mark.parametrize("call,message,where", ARGUMENT_ERRORS, ids=[a[0] for a in ARGUMENT_ERRORS])
def test_a_wrong_argument_is_named_with_its_position(tiny, call, message, where):
    query = f"SELECT {call} FROM t"
    with pytest.raises(SqlError, match=f"{call.split('(')[0]}\\(\\): {message}") as info:
        tiny.sql(query)
    assert at(query, info.value).startswith(where)


@pytest.mark.parametrize("options", ACCEPTED_OPTIONS)
def test_options_that_take_effect_together_are_accepted(tiny, options):
    assert "BatchedGenerate" in tiny.explain(f"SELECT generate('tiny', p, {options}) FROM t")
