"""The executor: vectorized relational operators, and model calls batched through the engine
(on the tiny random Llama, so these run in seconds)."""
from __future__ import annotations

import re

import pyarrow as pa
import pytest

import sqlm
from operators import physical as P
from planner.errors import SqlError


@pytest.fixture
def con(tmp_path):
    c = sqlm.connect(tmp_path / "home")
    c.register("t", pa.table({"id": list(range(1, 11)), "grp": ["a", "b"] * 5, "x": [1.5 * i for i in range(10)],
                              "s": [f"row {i}" for i in range(10)]}))
    c.register("u", pa.table({"grp": ["a", "b", "c"], "label": ["alpha", "beta", "gamma"]}))
    yield c
    c.close()


def rows(con, sql):
    return con.sql(sql).arrow().to_pylist()


def test_filter_project_sort_limit(con):
    assert rows(con, "SELECT id, x * 2 AS y FROM t WHERE grp = 'a' AND id > 2 ORDER BY id DESC LIMIT 2") == [
        {"id": 9, "y": 24.0}, {"id": 7, "y": 18.0}]


def test_string_functions_and_like(con):
    assert rows(con, "SELECT upper(s) || '!' AS v FROM t WHERE s LIKE 'row 1%'") == [{"v": "ROW 1!"}]


def test_hash_join_and_aggregate(con):
    got = rows(con, "SELECT u.label, count(*) AS n, sum(t.x) AS total FROM t JOIN u ON t.grp = u.grp "
                    "GROUP BY u.label ORDER BY u.label")
    assert got == [{"label": "alpha", "n": 5, "total": 30.0}, {"label": "beta", "n": 5, "total": 37.5}]


def test_left_join_keeps_unmatched(con):
    got = rows(con, "SELECT u.grp, count(t.id) AS n FROM u LEFT JOIN t ON u.grp = t.grp GROUP BY u.grp ORDER BY u.grp")
    assert got == [{"grp": "a", "n": 5}, {"grp": "b", "n": 5}, {"grp": "c", "n": 0}]


def test_values_distinct_and_having(con):
    assert rows(con, "SELECT DISTINCT v FROM (VALUES (1), (2), (1)) AS w(v) ORDER BY v") == [{"v": 1}, {"v": 2}]
    assert rows(con, "SELECT grp, count(*) AS n FROM t GROUP BY grp HAVING count(*) > 4 ORDER BY grp") == [
        {"grp": "a", "n": 5}, {"grp": "b", "n": 5}]


def test_ctes_see_earlier_ctes_and_rename_columns(con):
    assert rows(con, "WITH a AS (SELECT id, grp FROM t WHERE id >= 3), b(n, g) AS (SELECT id, grp FROM a) "
                     "SELECT n FROM b WHERE g = 'a' AND n < 6 ORDER BY n") == [{"n": 3}, {"n": 5}]
    assert rows(con, "WITH a AS (SELECT id FROM t) SELECT x.id FROM a x JOIN a y ON x.id = y.id "
                     "WHERE x.id <= 2 ORDER BY 1") == [{"id": 1}, {"id": 2}]
    assert rows(con, "SELECT * FROM (WITH z AS (SELECT 1 AS one) SELECT one FROM z) s") == [{"one": 1}]


def test_recursive_cte(con):
    assert rows(con, "WITH RECURSIVE r AS (SELECT 1 AS x UNION ALL SELECT x + 1 FROM r WHERE x < 3) "
                     "SELECT x FROM r ORDER BY x") == [{"x": 1}, {"x": 2}, {"x": 3}]


@pytest.mark.parametrize("query,message", [
    ("WITH a AS (SELECT 1 AS x) SELECT * FROM b", "unknown table 'b'"),
    ("WITH a AS (SELECT * FROM a) SELECT * FROM a", 'Circular reference to CTE "a"'),  # a CTE does not see itself
    ("SELECT * FROM (WITH z AS (SELECT 1 AS one) SELECT one FROM z) s, z", "Table with name z does not exist"),
])
def test_cte_errors_name_the_problem(con, query, message):
    with pytest.raises(SqlError, match=re.escape(message)):
        con.sql(query)


def test_select_without_from(con):
    assert rows(con, "SELECT 1 + 2 AS three, 'x' || 'y' AS xy") == [{"three": 3, "xy": "xy"}]


def test_read_parquet_and_csv(con, tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "f.parquet")
    pacsv.write_csv(table, tmp_path / "f.csv")
    assert rows(con, f"SELECT b FROM read_parquet('{tmp_path}/f.parquet') WHERE a >= 2") == [{"b": "y"}, {"b": "z"}]
    assert rows(con, f"SELECT count(*) AS n FROM read_csv('{tmp_path}/f.csv')") == [{"n": 3}]


# -- model calls on the tiny model ---------------------------------------------------------

@pytest.fixture
def tiny_con(tmp_path, tiny_llama):
    c = sqlm.connect(tmp_path / "home")
    c.sql(f"CREATE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    yield c
    c.close()


def llm_actuals(con):
    plan = con.last_plan.plan
    return [(plan.op(n), con.last_actuals[n]) for n in plan.walk() if isinstance(plan.op(n), P.LLM_OPERATORS)]


def test_limit_3_over_100_rows_generates_exactly_3(tiny_con):
    tiny_con.register("hundred", pa.table({"id": list(range(100)), "body": [f"the fox {i}" for i in range(100)]}))
    out = tiny_con.sql("SELECT id, generate('tiny', body, max_tokens => 2) AS g FROM hundred LIMIT 3").arrow()
    assert out.num_rows == 3
    [(op, actual)] = llm_actuals(tiny_con)
    assert actual.llm.num_requests == 3 and actual.rows == 3


@pytest.mark.parametrize("query", [
    "SELECT * FROM (SELECT id, generate('tiny', body, max_tokens => 2) AS g FROM eighty) s WHERE id < 4",
    "WITH answers AS (SELECT id, generate('tiny', body, max_tokens => 2) AS g FROM eighty) "
    "SELECT id, g FROM answers WHERE id < 4",
])
def test_a_filter_on_a_subquery_or_cte_column_runs_before_generation(tiny_con, query):
    tiny_con.register("eighty", pa.table({"id": list(range(80)), "body": [f"the fox {i}" for i in range(80)]}))
    out = tiny_con.sql(query).arrow()
    assert sorted(out.column("id").to_pylist()) == [0, 1, 2, 3]
    [(op, actual)] = llm_actuals(tiny_con)
    assert actual.llm.num_requests == 4


def test_60_rows_with_6_distinct_prompts_run_6_generations(tiny_con):
    tiny_con.register("sixty", pa.table({"id": list(range(60)), "topic": [f"dog {i % 6}" for i in range(60)]}))
    out = tiny_con.sql("SELECT id, generate('tiny', 'the ' || topic, max_tokens => 2) AS g FROM sixty").arrow()
    [(op, actual)] = llm_actuals(tiny_con)
    assert op.options.dedup and actual.llm.num_requests == 6 and actual.distinct_inputs == 6
    by_topic = {}
    for r in out.to_pylist():  # every row got the answer of its own prompt
        by_topic.setdefault(r["id"] % 6, set()).add(r["g"])
    assert all(len(v) == 1 for v in by_topic.values())


def test_plain_filter_runs_before_generation(tiny_con):
    tiny_con.register("t", pa.table({"id": list(range(20)), "stars": [i % 5 + 1 for i in range(20)],
                                     "body": [f"quick fox {i}" for i in range(20)]}))
    tiny_con.sql("SELECT id, generate('tiny', body, max_tokens => 2) FROM t WHERE stars <= 2")
    [(op, actual)] = llm_actuals(tiny_con)
    assert actual.llm.num_requests == 8


CLASSIFY = "SELECT classify('tiny', body, ['fox', 'dog', 'cat'], instruction => 'Which animal?') AS a FROM t"
BODIES = pa.table({"body": ["the quick fox", "the lazy dog", None, "héllo wörld"]})


def test_classify_returns_only_labels(tiny_con):
    tiny_con.register("t", BODIES)
    tiny_con.sql("SET prefix_cache = off")
    values = tiny_con.sql(CLASSIFY).arrow().column("a").to_pylist()
    assert values[2] is None and all(v in ("fox", "dog", "cat") for v in values[:2] + values[3:])
    [(op, actual)] = llm_actuals(tiny_con)
    assert actual.llm.num_requests == 9  # 3 rows with text x 3 labels


def test_classify_labels_share_the_prompt_in_the_prefix_cache(tiny_con):
    tiny_con.register("t", BODIES)
    tiny_con.sql(CLASSIFY)
    [(op, actual)] = llm_actuals(tiny_con)
    assert actual.llm.num_cached_prompt_tokens > 0  # the labels of one row share its prompt


class EchoLLM:
    """Stands in for the engine: answers each prompt with itself reversed, records what it was sent."""

    def __init__(self):
        self.batches = []

    def generate(self, model, knobs, prompts, sampling, chat, on_progress, priority=0, n=1):
        from runtime.llm_ops import LLMOutcome

        self.batches.append(list(prompts))
        return LLMOutcome(values=[p[::-1] for p in prompts], num_requests=len(prompts))


@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("order", ["arrival", "prefix"])
def test_dedup_and_prefix_order_put_answers_back_on_their_rows(order, dedup):
    from planner.examples import chain, scan, generate
    from planner.lower import lower
    from planner.examples import context
    from operators.logical import LLMOptions
    from dataclasses import replace
    from runtime.executor import Executor

    bodies = ["b2", "a1", None, "b2", "a0", "c9", "a1"]
    logical = chain(scan("t", id=list(range(7)), body=bodies), generate('"t.body"'))
    gen = next(n for n in logical.walk() if logical.op(n).name == "Generate")
    logical.set_op(gen, replace(logical.op(gen), options=LLMOptions(dedup=dedup, order=order)))
    llm = EchoLLM()
    table, actuals = Executor(llm).run(lower(logical, [], context()).plan)
    assert table.column("__llm_0").to_pylist() == [None if b is None else b[::-1] for b in bodies]
    sent = llm.batches[0]
    assert len(sent) == (4 if dedup else 6)
    if order == "prefix":
        assert sent == sorted(sent)
    else:
        assert sent == list(dict.fromkeys(b for b in bodies if b)) if dedup else [b for b in bodies if b]


def test_division_by_zero_as_in_duckdb(con):
    assert rows(con, "SELECT 1 / 0 AS a, -7 % 3 AS d, 7.5 / 2 AS e") == [{"a": float("inf"), "d": -1, "e": 3.75}]
    with pytest.raises(SqlError, match="Division by zero"):
        con.sql("SELECT 7 // 0 AS b")


@pytest.mark.parametrize("query,message", [
    ("SELECT " + "(" * 1500 + "1" + ")" * 1500, "nested too deeply (more than 32 levels"),
    ("SELECT generate('smollm2', 'hi', stop => '') AS g", "stop strings must not be empty"),
    ("SELECT * FROM read_csv('x.csv', delim => ';')", "option 'delim' is not supported"),
    ("SELECT * FROM read_parquet('x.parquet', hive_partitioning = true)", "option 'hive_partitioning' is not supported"),
])
def test_input_sqlm_cannot_honour_is_an_error_naming_it(con, query, message):
    with pytest.raises(SqlError, match=re.escape(message)):
        con.sql(query)


def test_generate_takes_a_priority_and_explain_shows_it(tiny_con, monkeypatch):
    tiny_con.register("pri", pa.table({"id": [1, 2], "body": ["the fox", "the dog"]}))
    submitted = []
    original = tiny_con._llm.generate

    def spy(*args, **kwargs):
        submitted.append(args[6] if len(args) > 6 else kwargs.get("priority", 0))
        return original(*args, **kwargs)
    monkeypatch.setattr(tiny_con._llm, "generate", spy)
    query = "SELECT id, generate('tiny', body, max_tokens => 2, priority => -2) AS g FROM pri"
    assert "priority: -2" in tiny_con.explain(query)
    assert tiny_con.sql(query).arrow().num_rows == 2
    assert submitted == [-2]  # the engine's requests carry it
    with pytest.raises(SqlError, match="priority must be int"):
        tiny_con.sql("SELECT generate('tiny', body, priority => 'high') FROM pri")


def test_classify_takes_a_priority(tiny_con):
    tiny_con.register("cls", pa.table({"t": ["good day", "bad day"]}))
    query = "SELECT classify('tiny', t, ['good', 'bad'], priority => 3) AS c FROM cls"
    assert "priority: 3" in tiny_con.explain(query)
    assert set(tiny_con.sql(query).arrow().column("c").to_pylist()) <= {"good", "bad"}
