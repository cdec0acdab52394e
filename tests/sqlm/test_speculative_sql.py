"""Speculative decoding as an optimizer choice, through SQL: SET obeys, auto prices, EXPLAIN shows it, the
answers never change."""
from __future__ import annotations

import pyarrow as pa
import pytest

import sqlm
from planner.errors import SqlError

QUERY = "SELECT id, generate('tiny', body, max_tokens => 12) AS g FROM t ORDER BY id"


@pytest.fixture(scope="module")
def small_tiny(tmp_path_factory):
    """A one-layer tiny Llama with the two-layer one's tokenizer: a catalog model that can draft for it."""
    from tiny_llama import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("small_tiny"), seed=3, layers=1)


@pytest.fixture
def con(tmp_path, tiny_llama):
    c = sqlm.connect(tmp_path / "home")
    c.sql(f"CREATE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    bodies = ["ab ab ab ab ab", "the quick brown fox the quick brown fox", "héllo wörld héllo wörld"]
    c.register("t", pa.table({"id": [1, 2, 3], "body": bodies}))
    yield c
    c.close()


def speculative_line(con, sql: str) -> str:
    (line,) = [l.strip() for l in con.explain(sql).splitlines() if "choice speculative" in l]
    return line


def answers(con) -> list:
    return con.sql(QUERY).arrow().column("g").to_pylist()


def test_set_speculative_is_obeyed_and_the_answers_do_not_change(con):
    con.sql("SET speculative = 'off'")
    off = answers(con)
    con.sql("SET speculative = 'ngram'; SET num_speculative_tokens = 5")
    assert speculative_line(con, QUERY).startswith("choice speculative = ngram k=5")
    assert "[forced by SET]" in speculative_line(con, QUERY)
    assert answers(con) == off
    (node,) = con.last_plan.llm_nodes()
    knobs = con.last_plan.plan.op(node).knobs
    assert (knobs.speculative, knobs.num_speculative_tokens) == ("ngram", 5)  # the engine ran with what was SET


def test_auto_learns_the_templates_acceptance(con):
    first = speculative_line(con, QUERY)
    assert "from a prior" in first
    answers(con)  # prompt lookup is replayed on the outputs, speculation on or off
    assert "prompt lookup replayed on" in speculative_line(con, QUERY)


def test_a_draft_model_of_the_same_tokenizer_is_a_candidate(con, small_tiny):
    con.sql("SET speculative = 'draft'")
    with pytest.raises(SqlError, match="no model smaller than 'tiny'"):
        con.explain(QUERY)
    con.sql("RESET speculative")
    off = answers(con)
    con.sql(f"CREATE MODEL small FROM '{small_tiny.gguf_path}'")
    con.sql("SET speculative = 'draft'; SET num_speculative_tokens = 3")
    assert speculative_line(con, QUERY).startswith("choice speculative = draft small k=3")
    assert answers(con) == off
    (llm,) = [a.llm for a in con.last_actuals.values() if a.llm is not None]
    assert llm.num_draft_tokens > 0
    # what the draft's drafts achieved is what the next plan prices
    assert "measured over" in speculative_line(con, QUERY)
