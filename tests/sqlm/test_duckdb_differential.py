"""sqlm's answers against DuckDB's on the same query text (rows compared as multisets).

Without model calls the relational engine answers; with them, the oracle is DuckDB over
a lookup table of the model's greedy answers (each prompt generated once, on its own):
`generate(p)` becomes a scalar subquery into that table, so everything around the call
(filters, semi-joins, joins, CTEs, aggregates, CASE) is checked against DuckDB.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter

import duckdb
import pyarrow as pa
import pytest

import sqlm

A = pa.table({"id": [1, 2, 3, 4, 5, None], "cat": ["x", "y", "x", None, "z", "y"],
              "v": [1.5, 2.0, None, 4.0, 5.5, 6.0], "n": [10, None, 30, 40, 50, 60]})
B = pa.table({"id": [1, 3, 5, 7], "name": ["one", "three", "five", None], "w": [100, 300, None, 700]})

EVERYDAY = [
    "SELECT id, cat FROM a WHERE id IN (SELECT id FROM b)",
    "SELECT id, cat FROM a WHERE id NOT IN (SELECT id FROM b)",
    "SELECT id FROM a WHERE id NOT IN (SELECT id FROM b WHERE id IS NOT NULL)",
    "SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.id = a.id)",
    "SELECT * FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.id = a.id)",
    "SELECT id, (SELECT name FROM b WHERE b.id = a.id) AS name FROM a",
    "SELECT id, (SELECT max(w) FROM b) AS top FROM a",
    "SELECT cat, sum(v) OVER (PARTITION BY cat) AS s FROM a",
    "SELECT id, row_number() OVER (ORDER BY id NULLS LAST) AS r FROM a",
    "SELECT id, rank() OVER (ORDER BY cat) AS r FROM a",
    "SELECT id, lag(v) OVER (ORDER BY id) AS prev FROM a",
    "SELECT cat FROM a UNION SELECT name FROM b",
    "SELECT cat FROM a UNION ALL SELECT name FROM b",
    "SELECT id FROM a INTERSECT SELECT id FROM b",
    "SELECT id FROM a EXCEPT SELECT id FROM b",
    "WITH c AS (SELECT * FROM a WHERE v > 2) SELECT count(*) AS n FROM c",
    "WITH c AS (SELECT id FROM b), d AS (SELECT id FROM c WHERE id > 2) SELECT * FROM d",
    "SELECT NULLIF(cat, 'x') AS c FROM a",
    "SELECT cat, string_agg(CAST(id AS VARCHAR), ',' ORDER BY id) AS ids FROM a GROUP BY cat",
    "SELECT CAST(1.5 AS INTEGER) AS i, CAST(2.5 AS INTEGER) AS j, CAST(-1.5 AS INTEGER) AS k",
    "SELECT a.id, b.name FROM a LEFT JOIN b ON a.id = b.id",
    "SELECT a.id, b.name FROM a RIGHT JOIN b ON a.id = b.id",
    "SELECT a.id, b.name FROM a FULL JOIN b ON a.id = b.id",
    "SELECT a.id, b.id AS bid FROM a CROSS JOIN b WHERE a.id < 3",
    "SELECT a.id, b.name FROM a JOIN b ON a.id < b.id",
    "SELECT cat, count(*) AS n, count(v) AS nv, avg(v) AS m FROM a GROUP BY cat",
    "SELECT cat, count(*) AS n FROM a GROUP BY cat HAVING count(*) > 1",
    "SELECT DISTINCT cat FROM a",
    "SELECT count(DISTINCT cat) AS k FROM a",
    "SELECT id, CASE WHEN v IS NULL THEN 'none' WHEN v > 3 THEN 'big' ELSE 'small' END AS size FROM a",
    "SELECT coalesce(cat, 'missing') AS c, n + 1 AS m FROM a",
    "SELECT id FROM a ORDER BY v DESC NULLS LAST LIMIT 3",
    "SELECT id FROM a ORDER BY id LIMIT 2 OFFSET 2",
    "SELECT upper(cat) || '-' || CAST(n AS VARCHAR) AS label FROM a WHERE cat LIKE '%x%'",
    "SELECT sum(n) AS s, min(v) AS lo, max(cat) AS hi FROM a",
    "SELECT id % 2 AS parity, count(*) AS c FROM a GROUP BY id % 2",
    "SELECT * FROM a WHERE v BETWEEN 2 AND 5",
    "SELECT * FROM a WHERE cat IN ('x', 'z') OR n IS NULL",
    "SELECT round(v / 3, 2) AS r FROM a",
    "SELECT id FROM a WHERE n > (SELECT avg(n) FROM a)",
]


def duck_rows(query: str) -> Counter:
    con = duckdb.connect()
    con.register("a", A)
    con.register("b", B)
    return multiset(con.sql(query).to_arrow_table())


def multiset(table: pa.Table) -> Counter:
    def norm(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else round(v, 9)
        return float(v) if type(v).__name__ == "Decimal" else v
    return Counter(tuple(norm(v) for v in row.values()) for row in table.to_pylist())


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    c = sqlm.connect(tmp_path_factory.mktemp("differential"))
    c.register("a", A)
    c.register("b", B)
    yield c
    c.close()


@pytest.mark.parametrize("query", EVERYDAY)
def test_everyday_queries_give_duckdbs_answers(con, query):
    assert multiset(con.sql(query).arrow()) == duck_rows(query)


def random_query(rng: random.Random) -> str:
    """A small SQLancer-style query over a and b: predicates with NULLs, joins, groups, set operations."""
    def predicate(t: str) -> str:
        column, op, value = rng.choice([("id", "<", 3), ("id", ">=", 2), ("v", ">", 2.0), ("n", "<>", 30),
                                         ("cat", "=", "'x'"), ("cat", "<>", "'y'")] if t == "a" else
                                        [("id", ">", 1), ("w", "<", 500), ("name", "=", "'one'")])
        p = f"{t}.{column} {op} {value}"
        return rng.choice([p, f"NOT ({p})", f"({p}) IS NULL", f"({p}) OR {t}.id IS NULL"])

    shape = rng.randrange(5)
    if shape == 0:
        return f"SELECT a.id, a.cat FROM a WHERE {predicate('a')} AND {predicate('a')}"
    if shape == 1:
        side = rng.choice(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"])
        return f"SELECT a.id, b.name FROM a {side} b ON a.id = b.id WHERE {predicate('a')} OR {predicate('b')}"
    if shape == 2:
        agg = rng.choice(["count(*)", "count(a.v)", "sum(a.n)", "min(a.v)", "max(a.cat)"])
        return f"SELECT a.cat, {agg} AS x FROM a WHERE {predicate('a')} GROUP BY a.cat"
    if shape == 3:
        op = rng.choice(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"])
        return f"SELECT a.id FROM a WHERE {predicate('a')} {op} SELECT b.id FROM b WHERE {predicate('b')}"
    neg = rng.choice(["", "NOT "])
    return f"SELECT a.id FROM a WHERE a.id {neg}IN (SELECT b.id FROM b WHERE {predicate('b')})"


@pytest.mark.parametrize("seed", range(150))
def test_generated_queries_give_duckdbs_answers(con, seed):
    query = random_query(random.Random(seed))
    assert multiset(con.sql(query).arrow()) == duck_rows(query), query


# -- with model calls: the oracle is DuckDB over a table of the model's answers ------------------

MODEL_QUERIES = [
    "SELECT id, generate('tiny', cat, max_tokens => 2) AS g FROM a WHERE id IN (SELECT id FROM b)",
    "WITH answers AS (SELECT id, generate('tiny', 'about ' || cat, max_tokens => 2) AS g FROM a) "
    "SELECT s.id, b.name, s.g FROM answers s JOIN b ON s.id = b.id WHERE s.id IN (SELECT id FROM b WHERE w > 100)",
    "SELECT cat, count(*) AS n, max(generate('tiny', cat, max_tokens => 2)) AS g FROM a GROUP BY cat",
    "SELECT id, generate('tiny', cat, max_tokens => 2) AS g FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.id = a.id)",
    "SELECT * FROM (SELECT id, generate('tiny', name, max_tokens => 2) AS g FROM b) s WHERE id > 1",
    "SELECT id, (SELECT max(w) FROM b) AS top, generate('tiny', cat, max_tokens => 2) AS g FROM a WHERE v > 1",
    "SELECT generate('tiny', cat, max_tokens => 2) AS g FROM a UNION SELECT generate('tiny', name, max_tokens => 2) FROM b",
    "SELECT id FROM a WHERE id < 3 UNION ALL SELECT id FROM b WHERE generate('tiny', name, max_tokens => 2) IS NOT NULL",
    "SELECT id, generate('tiny', cat, max_tokens => 2) AS g, row_number() OVER (ORDER BY id) AS r, "
    "sum(v) OVER (PARTITION BY cat) AS s FROM a WHERE id > 1",
    "SELECT id, CASE WHEN v > 2 THEN generate('tiny', cat, max_tokens => 2) ELSE 'small' END AS g FROM a",
    "SELECT cat, string_agg(generate('tiny', cat, max_tokens => 2), '|' ORDER BY id) AS gs, "
    "count(DISTINCT n) AS k, quantile_cont(v, 0.5) AS med FROM a GROUP BY cat",
    "SELECT a.id, b.id AS bid, generate('tiny', b.name, max_tokens => 2) AS g FROM a JOIN b ON a.id < b.id AND b.w > 100",
    "WITH ranked AS (SELECT id, cat, v FROM a QUALIFY row_number() OVER (PARTITION BY cat ORDER BY v DESC) = 1) "
    "SELECT r.id, generate('tiny', r.cat, max_tokens => 2) AS g FROM ranked r",
    "SELECT s.cat, s.id, generate('tiny', s.cat, max_tokens => 2) AS g FROM "
    "(SELECT DISTINCT ON (cat) cat, id FROM a ORDER BY cat, id) s",
    "SELECT g.cat, g.n, generate('tiny', coalesce(g.cat, 'all'), max_tokens => 2) AS x FROM "
    "(SELECT cat, count(*) AS n FROM a GROUP BY ROLLUP (cat)) g",
    "SELECT u.x, generate('tiny', 'n' || CAST(u.x AS VARCHAR), max_tokens => 2) AS g FROM (SELECT unnest([1, 2, 3]) AS x) u",
    "WITH w AS (SELECT id, rank() OVER (ORDER BY v DESC) AS r FROM a) "
    "SELECT w.id, w.r, generate('tiny', b.name, max_tokens => 2) AS g FROM w JOIN b ON w.id = b.id",
]

ORACLE_ANSWERS: dict[str, str] = {}  # prompt -> the tiny model's greedy answer, generated alone
CALL = re.compile(r"generate\('tiny', (.+?), max_tokens => 2\)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_llama):
    c = sqlm.connect(tmp_path_factory.mktemp("differential_model"))
    c.register("a", A)
    c.register("b", B)
    c.sql(f"CREATE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    yield c
    c.close()


def oracle_rows(tiny, query: str) -> Counter:
    """DuckDB's answer with each generate(p) a scalar Python function that asks the model for p alone: the
    row-by-row oracle (each distinct prompt generated once, on its own, and remembered across queries)."""
    answers = ORACLE_ANSWERS

    def gen(prompt: str) -> str:
        if prompt not in answers:
            literal = prompt.replace("'", "''")
            answers[prompt] = tiny.sql(f"SELECT generate('tiny', '{literal}', max_tokens => 2) AS g").arrow().column(0)[0].as_py()
        return answers[prompt]

    duck = duckdb.connect(config={"threads": 1})  # one sqlm connection answers: one caller at a time
    duck.register("a", A)
    duck.register("b", B)
    duck.create_function("oracle_generate", gen, ["VARCHAR"], "VARCHAR", side_effects=False)
    return multiset(duck.sql(CALL.sub(lambda m: f"oracle_generate({m.group(1)})", query)).to_arrow_table())


@pytest.mark.parametrize("query", MODEL_QUERIES)
def test_model_queries_give_the_oracles_answers(tiny, query):
    assert multiset(tiny.sql(query).arrow()) == oracle_rows(tiny, query)


def test_generate_in_a_cte_joined_and_semi_joined_calls_the_model_only_for_surviving_rows(tiny):
    from operators import physical as P

    tiny.register("eighty", pa.table({"id": list(range(80)), "body": [f"the fox {i}" for i in range(80)]}))
    tiny.register("tags", pa.table({"id": list(range(80)), "tag": [f"t{i % 3}" for i in range(80)]}))
    tiny.register("wanted", pa.table({"id": [3, 5, 70, 200]}))
    out = tiny.sql("WITH answers AS (SELECT id, generate('tiny', body, max_tokens => 2) AS g FROM eighty) "
                   "SELECT s.id, t.tag, s.g FROM answers s JOIN tags t ON s.id = t.id "
                   "WHERE s.id IN (SELECT id FROM wanted)").arrow()
    assert sorted(out.column("id").to_pylist()) == [3, 5, 70]
    plan = tiny.last_plan.plan
    [calls] = [tiny.last_actuals[n].llm.num_requests for n in plan.walk() if isinstance(plan.op(n), P.LLM_OPERATORS)]
    assert calls == 3


def test_a_limit_does_not_pass_below_a_window(tiny):
    """row_number() numbers every row of a; LIMIT 2 keeps two of them, not a renumbering of two."""
    out = tiny.sql("SELECT id, row_number() OVER (ORDER BY id DESC) AS r, generate('tiny', cat, max_tokens => 2) AS g "
                   "FROM a WHERE id IS NOT NULL ORDER BY id LIMIT 2").arrow().to_pylist()
    assert [(r["id"], r["r"]) for r in out] == [(1, 5), (2, 4)]


def test_a_call_in_a_case_branch_runs_only_for_the_rows_that_take_it(tiny):
    from operators import physical as P

    query = ("SELECT id, CASE WHEN v > 4 THEN generate('tiny', cat, max_tokens => 2) "
             "WHEN v IS NULL THEN 'none' ELSE 'small' END AS g FROM a")
    got = multiset(tiny.sql(query).arrow())
    plan = tiny.last_plan.plan
    [calls] = [tiny.last_actuals[n].llm.num_requests for n in plan.walk() if isinstance(plan.op(n), P.LLM_OPERATORS)]
    assert calls == 2  # the rows with v > 4 (v 5.5, cat 'z'; v 6.0, cat 'y'), not all 6
    assert got == oracle_rows(tiny, query)


@pytest.mark.parametrize("query,what", [
    ("SELECT DISTINCT ON (cat) generate('tiny', cat, max_tokens => 2) AS g FROM a", "DISTINCT ON"),
    ("SELECT cat, max(generate('tiny', cat, max_tokens => 2)) FROM a GROUP BY ROLLUP (cat)", "ROLLUP"),
    ("SELECT generate('tiny', cat, max_tokens => 2) AS g FROM a QUALIFY row_number() OVER () = 1", "QUALIFY"),
])
def test_what_a_model_query_cannot_hold_is_an_error_naming_it(tiny, query, what):
    from planner.errors import SqlError

    with pytest.raises(SqlError, match=f"{what}.* is not supported in a query with model calls"):
        tiny.sql(query)
