"""The public API: statements, clear errors with positions, and writes that are all-or-nothing."""
from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import sqlm
from catalog.errors import ModelError
from planner.errors import SqlError


@pytest.fixture
def con(tmp_path):
    c = sqlm.connect(tmp_path / "home")
    c.register("t", pa.table({"id": [1, 2, 3], "stars": [1, 4, 5], "body": ["bad", "good", "great"]}))
    yield c
    c.close()


@pytest.fixture
def tiny(con, tiny_llama):
    con.sql(f"CREATE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    return con


def test_set_reset_show_settings(con):
    con.sql("SET max_batch_size = 8")
    con.sql("SET kv_cache_memory = '64MB'")
    shown = {r["name"]: r["value"] for r in con.sql("SHOW SETTINGS").arrow().to_pylist()}
    assert shown["max_batch_size"] == "8" and shown["kv_cache_memory"] == "64MB"
    con.sql("RESET max_batch_size")
    assert con.settings.is_auto("max_batch_size")
    with pytest.raises(SqlError, match="scheduling must be one of auto, fcfs, spf.*line 1, column 5"):
        con.sql("SET scheduling = lifo")
    with pytest.raises(SqlError, match="unknown rule 'no_such_rule'"):
        con.sql("SET disabled_rules = 'no_such_rule'")


def test_create_table_as_and_show_and_describe(con):
    assert "created table good (2 rows)" in con.sql("CREATE TABLE good AS SELECT id, body FROM t WHERE stars >= 4").message
    assert con.sql("SELECT count(*) AS n FROM good").arrow().to_pylist() == [{"n": 2}]
    assert "good" in con.sql("SHOW TABLES").arrow().column("name").to_pylist()
    assert con.sql("DESCRIBE good").arrow().to_pylist() == [{"column": "id", "type": "int64"},
                                                          {"column": "body", "type": "string"}]
    # persisted in the catalog: a new connection sees it
    again = sqlm.connect(con.catalog.home)
    assert again.sql("SELECT body FROM good ORDER BY id").arrow().column(0).to_pylist() == ["good", "great"]


def test_failing_create_table_as_leaves_nothing(con):
    with pytest.raises(SqlError, match='column "nope" not found'):
        con.sql("CREATE TABLE broken AS SELECT nope FROM t")
    with pytest.raises(Exception):
        con.sql("CREATE TABLE broken AS SELECT CAST(body AS INT) AS n FROM t")  # fails while running
    assert con.catalog.get_table("broken") is None
    assert list((con.catalog.home / "tables").iterdir()) == []


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_copy_to_writes_every_format(con, tmp_path, fmt):
    target = tmp_path / f"out.{fmt}"
    con.sql(f"COPY (SELECT id FROM t ORDER BY id) TO '{target}' (FORMAT {fmt.upper()})")
    if fmt == "parquet":
        assert pq.read_table(target).column("id").to_pylist() == [1, 2, 3]
    elif fmt == "json":
        assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == [1, 2, 3]
    else:
        assert target.read_text().splitlines() == ['"id"', "1", "2", "3"]


def test_failing_copy_leaves_no_file(con, tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(Exception):
        con.sql(f"COPY (SELECT CAST(body AS INT) AS n FROM t) TO '{target}'")
    assert list(tmp_path.glob("*out.parquet*")) == []
    target.write_bytes(b"old contents")
    with pytest.raises(Exception):
        con.sql(f"COPY (SELECT CAST(body AS INT) AS n FROM t) TO '{target}'")
    assert target.read_bytes() == b"old contents"  # the old file is never half-overwritten


ERRORS = [
    ("SELECT nope FROM t", 'Referenced column "nope" not found', (1, 8)),
    ("SELECT id FROM missing_table", "unknown table 'missing_table'", (1, 16)),
    ("SELECT generate('no_such_model', body) FROM t", "unknown model 'no_such_model'", (1, 17)),
    ("SELECT id FROM t WHERE", "Syntax error", (1, 18)),
    ("SELECT id FROM read_parquet('/no/such/file.parquet')", "file not found", (1, 16)),
]


@pytest.mark.parametrize("sql,message,position", ERRORS, ids=[e[1] for e in ERRORS])
def test_errors_name_the_problem_and_position(con, sql, message, position):
    with pytest.raises(SqlError) as info:
        con.sql(sql)
    assert message in str(info.value)
    assert (info.value.line, info.value.col) == position


def test_missing_model_file(con):
    with pytest.raises(SqlError, match="model file not found: /no/such.gguf"):
        con.sql("CREATE MODEL m FROM '/no/such.gguf'")


def test_non_text_prompt(tiny):
    with pytest.raises(SqlError, match=r"the prompt must be text, got int64 \(stars\).*line 1, column 25"):
        tiny.sql("SELECT generate('tiny', stars) FROM t")


def test_empty_prompt_without_template_is_named(tiny):
    tiny.register("prompts", pa.table({"p": ["the lazy fox", ""]}))
    with pytest.raises(ValueError, match=r"the prompt '' has no tokens \(chat => false adds no template\)"):
        tiny.sql("SELECT generate('tiny', p, max_tokens => 2, chat => false) FROM prompts")
    # with the chat template an empty message is a prompt like any other
    assert tiny.sql("SELECT generate('tiny', p, max_tokens => 2) AS g FROM prompts").arrow().num_rows == 2


def test_explain_formats_and_verbose(tiny):
    q = "SELECT id, generate('tiny', body, max_tokens => 2) FROM t WHERE stars > 3 LIMIT 1"
    text = tiny.explain("EXPLAIN (VERBOSE) " + q)
    assert "BatchedGenerate" in text and "choice max_batch_size" in text and "runner-up" in text
    assert "limit_pushdown: fired" in text and "predicate_pushdown: fired" in text
    plan = json.loads(tiny.sql("EXPLAIN (FORMAT JSON) " + q).arrow().column(0)[0].as_py())
    assert plan["plan"]["operator"] == "Project"
    analyzed = json.loads(tiny.explain("EXPLAIN ANALYZE (FORMAT JSON) " + q))
    gen = analyzed["plan"]["children"][0]
    assert gen["operator"] == "BatchedGenerate" and gen["actual"]["llm_calls"] == 1
    assert gen["q_error"]["rows"] == pytest.approx(1.0, rel=0.05) and "prefix_cache_hit_rate" in gen["actual"]


def test_show_models_lists_created_and_builtin(tiny):
    names = tiny.sql("SHOW MODELS").arrow().column("name").to_pylist()
    assert "tiny" in names and "smollm2" in names


def test_statistics_learned_from_a_query(tiny):
    tiny.sql("SELECT generate('tiny', body, max_tokens => 3) FROM t")
    op = tiny.last_plan.plan.op(tiny.last_plan.llm_nodes()[0])
    assert sum(n for _, _, n in tiny.catalog.output_length_histogram("tiny", op.template)) == 3
    plan = tiny.explain("SELECT generate('tiny', body, max_tokens => 3) FROM t")
    assert re.search(r"statistics of 3 earlier outputs of this template: mean [0-9.]+, p90 [0-3]", plan)


def test_unknown_model_without_loading_anything(con):
    with pytest.raises(SqlError) as info:
        con.sql("SELECT classify('gpt-17', body, ['a', 'b']) FROM t")
    assert isinstance(info.value.__cause__, (ModelError, type(None)))


@pytest.mark.parametrize("weight_format", ["native", "fp32"])
def test_tvm_kernels_give_the_torch_tokens(tiny, weight_format):
    query = "SELECT generate('tiny', 'the lazy fox', max_tokens => 12, chat => false) AS g"
    tiny.sql("SET kernels = 'torch'")
    tiny.sql(f"SET weight_format = '{weight_format}'")
    expected = tiny.sql(query).arrow().column("g").to_pylist()
    tiny.sql("SET kernels = 'tvm'")
    assert tiny.sql(query).arrow().column("g").to_pylist() == expected
    plan = tiny.explain(query)
    assert f"weight_format/kernels = {weight_format}/tvm" in plan and "forced" in plan


def test_planned_kv_cache_dtype_and_attention_kernel_reach_the_engine(tiny):
    query = "SELECT generate('tiny', body, max_tokens => 2) AS g FROM t"
    tiny.sql("SET kv_cache_dtype = bf16")
    tiny.sql("SET kernels = torch")
    tiny.sql(query)
    (_, engine), = tiny._llm._engines.values()
    assert engine.config.kv_cache_dtype == "bf16" and engine.config.attention_kernel == "torch"
    assert engine.runner.cache.dtype == torch.bfloat16
    plan = tiny.explain(query)
    assert "choice kv_cache_dtype = bf16" in plan and "choice attention_kernel = torch" in plan
    assert plan.count("[forced by SET]") >= 3  # weights/kernels, KV dtype, attention kernel


def test_set_threads_holds_for_the_query_only(con, monkeypatch):
    from runtime.executor import Executor

    seen, run = [], Executor.run
    monkeypatch.setattr(Executor, "run", lambda self, plan: seen.append(torch.get_num_threads()) or run(self, plan))
    before = torch.get_num_threads()
    con.sql("SET threads = 1")
    assert con.sql("SELECT id FROM t").arrow().num_rows == 3
    assert seen == [1] and torch.get_num_threads() == before
    con.sql("RESET threads")
    con.sql("SELECT id FROM t")
    assert seen == [1, before]


def test_set_prefill_dtype_and_its_errors(con):
    con.sql("SET prefill_dtype = 'bf16'")
    assert con.settings.prefill_dtype == "bf16"
    con.sql("RESET prefill_dtype")
    assert con.settings.is_auto("prefill_dtype")
    with pytest.raises(SqlError, match=r"prefill_dtype must be one of auto, fp32, bf16, got 'fp16' \(line 1"):
        con.sql("SET prefill_dtype = 'fp16'")
    con.sql("SET GLOBAL prefill_dtype = fp32")  # persisted: a new connection starts with it
    again = sqlm.connect(con.catalog.home)
    assert again.settings.prefill_dtype == "fp32"
    again.close()


def test_set_prefill_dtype_bf16_builds_bf16_prefill_linears_and_generates(tiny, monkeypatch):
    from codegen.linear import TvmQuantizedLinear

    paths, run, bind = [], TvmQuantizedLinear.run, TvmQuantizedLinear.kernel_call
    monkeypatch.setattr(TvmQuantizedLinear, "run", lambda self, path, x: paths.append(path) or run(self, path, x))
    # decode steps run captured: their linears' kernels are bound once (codegen.captured_forward)
    monkeypatch.setattr(TvmQuantizedLinear, "kernel_call", lambda self, tokens, x, out: paths.append(
        self.crossover.path(tokens, self.prefill_dtype)) or bind(self, tokens, x, out))
    prompt = "the quick brown fox jumps over the lazy dog. " * 8
    assert len(tiny._llm.loaded("tiny").tokenizer.encode(prompt)) >= 64  # past CROSSOVER.bf16_min_tokens
    query = f"SELECT generate('tiny', '{prompt}', max_tokens => 4, chat => false) AS g"
    tiny.sql("SET weight_format = native; SET kernels = tvm; SET prefill_dtype = 'bf16'")
    (text,) = tiny.sql(query).arrow().column("g").to_pylist()
    assert isinstance(text, str) and text
    assert "dequant_bf16" in paths and "gemv" in paths  # the prompt's prefill in bf16, decode on the GEMV
    (model,) = tiny._llm._models.values()
    quantized = [linear for layer in model.layers for linear in vars(layer).values()
                 if isinstance(linear, TvmQuantizedLinear)]
    assert quantized and all(linear.prefill_dtype == "bf16" for linear in quantized)
    plan = tiny.explain(query)
    assert "choice prefill_dtype = bf16" in plan and "runner-up fp32" in plan and "8 mantissa bits" in plan
    # the knob is part of the model's key: fp32 prefill builds (and runs) a model of its own
    tiny.sql("SET prefill_dtype = fp32")
    tiny.sql(query)
    assert sorted(m.layers[0].gate_up_proj.prefill_dtype for m in tiny._llm._models.values()) == ["bf16", "fp32"]


def test_explain_says_what_each_linear_of_the_model_runs(tiny, monkeypatch):
    from planner.examples import EXAMPLE_TVM_HARDWARE

    monkeypatch.setattr("planner.context.hardware_profile", lambda **_: EXAMPLE_TVM_HARDWARE)
    tiny.sql("SET weight_format = 'native'; SET speculative = 'off'")  # decode steps of exactly the 3 rows
    text = tiny.explain("SELECT generate('tiny', body, max_tokens => 4) FROM t")
    (line,) = [line.strip() for line in text.splitlines() if line.strip().startswith("kernels: ")]
    # the tiny GGUF's q, k and v differ in type (stacked as fp32 at load) and o is F16 (read as fp32): both run
    # codegen.linear.TvmDenseLinear, the GEMV for a few rows and torch above; gate/up (Q4_1) and down (Q8_0)
    # stay quantized on the fused kernels
    assert line.startswith("kernels: qkv, o fp32 as stored: decode tvm dense_matmul (3 rows), prefill torch fp32 "
                           "matmul (62 rows); gate_up Q4_1 kept quantized: decode tvm quant_gemv (3 rows), prefill "
                           "tvm quant_gemm (62 rows); down Q8_0 kept quantized: decode tvm quant_gemv (3 rows)")


CREATOR = """
import os, sys, time
import sqlm
home, start, who = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlm.connect(home)
while not os.path.exists(start):
    time.sleep(0.001)
try:
    con.sql(f"CREATE TABLE t_same AS SELECT {who} AS who")
    print("created")
except Exception as e:
    print("refused:", e)
"""


def test_two_processes_creating_the_same_table_at_once_one_wins(tmp_path):
    import subprocess
    import sys
    import time

    home, start = tmp_path / "home", tmp_path / "start"
    sqlm.connect(home).close()
    procs = [subprocess.Popen([sys.executable, "-c", CREATOR, str(home), str(start), str(who)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in (1, 2)]
    time.sleep(3)  # both connected and waiting
    start.write_text("go")
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(o.split(":")[0] for o in outs) == ["created", "refused"], outs
    assert "already exists" in next(o for o in outs if o.startswith("refused"))
    winner = 1 if outs[0] == "created" else 2
    con = sqlm.connect(home)
    assert con.sql("SELECT who FROM t_same").arrow().to_pylist() == [{"who": winner}]
    assert len(list((home / "tables").glob("*.parquet"))) == 1  # the loser's file is gone


def test_table_names_cannot_name_paths(tmp_path):
    con = sqlm.connect(tmp_path / "home")
    for name in ('"../../x"', '""', '"a/b"', '".hidden"'):
        with pytest.raises(SqlError, match="not allowed|must not be empty"):
            con.sql(f"CREATE TABLE {name} AS SELECT 1 AS a")
    assert not (tmp_path / "x.parquet").exists() and list((tmp_path / "home" / "tables").iterdir()) == []


def test_a_crashed_writers_temporary_file_is_removed_on_open(tmp_path):
    con = sqlm.connect(tmp_path / "home")
    tables = tmp_path / "home" / "tables"
    dead = tables / ".t-0123.parquet.tmp-999999999"  # no such process
    alive = tables / f".t-4567.parquet.tmp-{os.getpid()}"  # a writer still at work
    dead.write_text("half"), alive.write_text("half")
    con.close()
    sqlm.connect(tmp_path / "home").close()
    assert not dead.exists() and alive.exists()


def test_analyze_computes_and_keeps_column_statistics(con, tmp_path):
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table({"name": ["ann", "bob", None, "ann"], "age": [31, 42, 27, 31]}), path)
    con.register("people", str(path))
    out = con.sql("ANALYZE people").arrow().to_pylist()
    by_column = {r["column"]: r for r in out}
    assert by_column["name"]["distinct"] == 2 and by_column["name"]["nulls"] == 1 and by_column["age"]["rows"] == 4
    source = con.catalog.get_table("people")
    assert con.catalog.column_stats(file_source_fingerprint(source.path))["name"]["distinct"] == 2
    with pytest.raises(SqlError, match="unknown table 'nobody'"):
        con.sql("ANALYZE nobody")


def file_source_fingerprint(path: str) -> str:
    from catalog.sources import file_source

    return file_source("parquet", path).fingerprint


def test_generate_with_a_json_schema_regex_or_choice(tiny):
    schema = json.dumps({"type": "object", "additionalProperties": False, "required": ["ok"],
                         "properties": {"ok": {"type": "boolean"}}})
    rows = tiny.sql(f"SELECT generate('tiny', body, json_schema => '{schema}', max_tokens => 16, temperature => 0.8, "
                    f"seed => 3) AS j, generate('tiny', body, regex => '[xy]{{3}}', max_tokens => 8) AS r, "
                    f"generate('tiny', body, choice => ['up', 'down']) AS c FROM t").arrow().to_pylist()
    for row in rows:
        assert isinstance(json.loads(row["j"])["ok"], bool)
        assert re.fullmatch("[xy]{3}", row["r"]) and row["c"] in ("up", "down")
    assert "structured: json_schema" in tiny.explain(f"SELECT generate('tiny', body, json_schema => '{schema}') FROM t")
    with pytest.raises(SqlError, match="regex: .*unclosed group"):
        tiny.sql("SELECT generate('tiny', body, regex => '(') FROM t")
    with pytest.raises(SqlError, match="give one of"):
        tiny.sql("SELECT generate('tiny', body, regex => 'a', choice => ['a']) FROM t")


def test_generate_takes_penalties_and_min_p(tiny):
    plain = tiny.sql("SELECT generate('tiny', body, max_tokens => 12) AS g FROM t").arrow().column(0).to_pylist()
    penalized = tiny.sql("SELECT generate('tiny', body, max_tokens => 12, repetition_penalty => 5.0, "
                         "presence_penalty => 2, min_p => 0.1) AS g FROM t").arrow().column(0).to_pylist()
    assert penalized != plain  # a random model repeats itself; a strong penalty changes that
    with pytest.raises(SqlError, match="repetition_penalty must be > 0"):
        tiny.sql("SELECT generate('tiny', body, repetition_penalty => 0.0) FROM t")


def test_n_samples_per_row_make_a_list_column(tiny):
    out = tiny.sql("SELECT generate('tiny', body, n => 3, temperature => 1.0, seed => 7, max_tokens => 6) AS g "
                   "FROM t").arrow()
    assert out.schema.field("g").type == pa.list_(pa.string())
    samples = out.column("g").to_pylist()
    assert all(len(s) == 3 for s in samples) and any(len(set(s)) > 1 for s in samples)
    op = tiny.last_plan.plan.op(tiny.last_plan.llm_nodes()[0])
    assert op.n == 3 and tiny.last_actuals[tiny.last_plan.llm_nodes()[0]].llm.num_requests == 3 * out.num_rows
    assert "n: 3" in tiny.explain("SELECT generate('tiny', body, n => 3) AS g FROM t")


def test_beam_search_in_sql(tiny):
    beams = tiny.sql("SELECT generate('tiny', body, beam_width => 3, max_tokens => 5) AS g FROM t").arrow()
    assert beams.num_rows == tiny.sql("SELECT count(*) AS n FROM t").arrow().column(0)[0].as_py()
    assert all(isinstance(g, str) for g in beams.column("g").to_pylist())
    assert "beam_width: 3" in tiny.explain("SELECT generate('tiny', body, beam_width => 3) AS g FROM t")
    lists = tiny.sql("SELECT generate('tiny', body, beam_width => 3, n => 2, max_tokens => 5) AS g FROM t").arrow()
    assert all(len(g) == 2 for g in lists.column("g").to_pylist())
