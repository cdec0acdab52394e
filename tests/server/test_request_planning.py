"""Every generation request is a plan on the one shared engine: the engine's knobs, exact prompt
figures, and output lengths recorded into the statistics the next plans read. /v1/sql's model
calls on the served model join the same engine."""
from __future__ import annotations

import httpx

from catalog.store import Catalog
from operators.requests import SamplingParams
from serving_helpers import TINY

KNOBS = ("max_batch_size", "prefill_chunk_tokens", "kv_block_size", "weight_format/kernels", "prefix_cache",
         "scheduling")


def generate_node(plan):
    return plan.plan.op(plan.llm_nodes()[0])


def test_a_request_plan_obeys_the_running_engines_knobs(tiny_server):
    from conftest import TINY_ENGINE

    planner = tiny_server.app.state.served.planner
    op = generate_node(planner.plan([tuple(range(5, 45))] * 2, SamplingParams(max_tokens=12), chat=True))
    assert op.name == "BatchedGenerate" and op.template == 'generate|?|chat=True'
    assert (op.knobs.max_batch_size, op.knobs.prefill_chunk_tokens, op.knobs.kv_block_size) == (
        TINY_ENGINE.max_batch_size, TINY_ENGINE.prefill_chunk_tokens, TINY_ENGINE.kv_block_size)
    assert op.knobs.kv_cache_memory == tiny_server.app.state.engine_loop.engine.stats.kv_cache_bytes
    chosen = [c for c in op.choices if c.knob in KNOBS]
    assert len(chosen) == len(KNOBS) and all(c.forced and c.forced_by == "the running engine" for c in chosen)
    assert op.estimate.llm_calls == 2 and round(op.estimate.prompt_tokens) == 80
    # the second choice finds the prompt both share in the prefix cache
    assert op.estimate.computed_prompt_tokens < op.estimate.prompt_tokens


def test_output_lengths_of_requests_feed_the_next_plan_and_the_catalog(tiny_server):
    planner = tiny_server.app.state.served.planner
    template = 'generate|?|chat=False'

    def seen() -> int:
        found = planner.ctx.statistics.expected_output_tokens(TINY, template, 5)
        return 0 if found is None else found[1]

    def stored() -> dict:
        planner.flush()
        catalog = Catalog(planner.lengths.catalog.home)  # the server's catalog, read afresh
        try:
            return {(n, c): k for n, c, k in catalog.output_length_histogram(TINY, template)}
        finally:
            catalog.close()

    # the catalog is shared with other tests' /v1/sql model calls, so it is compared with itself
    before, examples, planned = seen(), len(planner.predictor), tiny_server.metric("sqlm_request_planning_seconds_count")
    stored_before = stored()
    tiny_server.client().completions.create(model=TINY, prompt="the quick", max_tokens=5, n=2,
                                            extra_body={"ignore_eos": True})
    assert seen() == before + 2  # the template's statistics
    assert len(planner.predictor) == examples + 2  # the per-request length predictor's history
    assert tiny_server.metric("sqlm_request_planning_seconds_count") == planned + 1

    after = stored()
    assert after.get((5, True), 0) == stored_before.get((5, True), 0) + 2
    assert sum(after.values()) == sum(stored_before.values()) + 2
    catalog = Catalog(planner.lengths.catalog.home)
    assert [n for _, n in catalog.length_examples(TINY)][-2:] == [5, 5]
    catalog.close()


def test_the_next_plan_predicts_each_request_from_similar_earlier_ones(tiny_server):
    planner = tiny_server.app.state.served.planner
    for _ in range(4):
        tiny_server.client().completions.create(model=TINY, prompt="the lazy dog sleeps", max_tokens=3,
                                                extra_body={"ignore_eos": True})
    prompt = tuple(tiny_server.app.state.served.tokenizer.encode("the lazy dog sleeps"))
    choice = next(c for c in generate_node(planner.plan([prompt], SamplingParams(max_tokens=40), False)).choices
                  if c.knob == "output_tokens")
    assert choice.value == 3 and "most similar" in choice.note


def test_sql_generate_joins_the_servers_engine(tiny_server, tiny_llama):
    def sql(query: str) -> httpx.Response:
        return httpx.post(f"{tiny_server.url}/v1/sql", json={"query": query}, timeout=120)

    assert sql(f"CREATE OR REPLACE MODEL {TINY} FROM '{tiny_llama.hf_dir}'").status_code == 200
    steps = tiny_server.metrics()["sqlm_engine_steps"]
    r = sql(f"SELECT generate('{TINY}', 'the lazy dog', max_tokens => 6, temperature => 0) AS g")
    assert r.status_code == 200, r.text
    assert tiny_server.metrics()["sqlm_engine_steps"] > steps
    steps = tiny_server.metrics()["sqlm_engine_steps"]
    r = sql(f"SELECT classify('{TINY}', 'what a great day', ['good', 'bad']) AS c")  # score requests
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0]["c"] in ("good", "bad")
    assert tiny_server.metrics()["sqlm_engine_steps"] > steps
    plan = sql(f"EXPLAIN SELECT generate('{TINY}', 'the lazy dog', max_tokens => 6) AS g").json()["rows"][0]["explain"]
    assert "choice max_batch_size = 64" in plan and "[forced by the running engine]" in plan
