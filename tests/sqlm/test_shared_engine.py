"""sqlm.connect(shared_engine=...): model calls on the shared engine's model join that engine
(the server's), obey its knobs in the plan, and leave the cost feedback alone."""
from __future__ import annotations

import pyarrow as pa
import pytest

import sqlm
from catalog.registry import load_cached
from operators.llama import build_model
from operators.engine_config import EngineConfig
from planner.cost import COST_MODEL_VERSION
from runtime.engine import Engine
from operators.engine_config import EngineConfig
from runtime.llm_ops import SharedEngine

QUERY = "SELECT id, generate('tiny', body, max_tokens => 5) AS g FROM t ORDER BY id"
ROWS = pa.table({"id": [1, 2, 3], "body": ["bad", "good", "great"]})


@pytest.fixture
def engine(tiny_llama):
    loaded = load_cached(tiny_llama.gguf_path)
    return Engine(build_model(loaded, "fp32"), loaded.tokenizer,
                  EngineConfig(kv_cache_memory=4 << 20, kv_block_size=8, max_batch_size=32, prefill_chunk_tokens=128))


def feedback_count(con) -> int:
    """Estimate-vs-actual observations recorded for the tiny model, whatever its weight path."""
    return sum(len(con.catalog.cost_observations("tiny", f"{fmt}/{kernels}", COST_MODEL_VERSION))
               for fmt in ("fp32", "bf16", "native") for kernels in ("torch", "tvm"))


def connect(home, tiny_llama, shared=None):
    con = sqlm.connect(home, shared_engine=shared)
    con.sql(f"CREATE OR REPLACE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    con.register("t", ROWS)
    return con


def test_generate_runs_on_the_shared_engine_with_its_knobs(tmp_path, tiny_llama, engine):
    knobs = EngineConfig(max_batch_size=32, prefill_chunk_tokens=128, kv_block_size=8,
                         kv_cache_memory=engine.stats.kv_cache_bytes, weight_format="fp32", kernels="torch",
                         kv_cache_dtype="fp32")
    ran = []

    def run(requests, on_progress):  # what the server's engine thread does, here on the caller's thread
        ran.extend(requests)
        return engine.generate(requests)

    shared = connect(tmp_path / "home", tiny_llama, SharedEngine(str(tiny_llama.gguf_path), knobs, run))
    table = shared.sql(QUERY).arrow()
    assert len(ran) == 3 and engine.stats.num_prompt_tokens == sum(len(r.prompt_token_ids) for r in ran)
    # its engine seconds include whatever else the shared engine ran: no lesson about speed from them
    assert feedback_count(shared) == 0
    own = connect(tmp_path / "home", tiny_llama)
    own.sql("SET weight_format = fp32; SET kernels = torch")  # the shared engine's weights, in an engine of its own
    assert own.sql(QUERY).arrow() == table
    assert feedback_count(own) == 1

    op = shared.last_plan.plan.op(shared.last_plan.llm_nodes()[0])
    assert op.knobs == knobs
    assert "choice max_batch_size = 32" in shared.explain(QUERY)
    assert "[forced by the running engine]" in shared.explain(QUERY)
    shared.close()
    own.close()


def test_other_models_still_get_their_own_engine(tmp_path, tiny_llama, engine):
    knobs = EngineConfig(max_batch_size=32, prefill_chunk_tokens=128, kv_block_size=8,
                         kv_cache_memory=engine.stats.kv_cache_bytes, weight_format="fp32", kernels="torch",
                         kv_cache_dtype="fp32")

    def run(requests, on_progress):
        raise AssertionError("the shared engine runs another model file")

    con = connect(tmp_path / "home", tiny_llama, SharedEngine(str(tiny_llama.hf_dir), knobs, run))
    assert con.sql(QUERY).arrow().num_rows == 3
    assert "[forced by the running engine]" not in con.explain(QUERY)
    con.close()
