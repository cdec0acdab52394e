"""`sqlm serve --kernels tvm --weight-format native`: the same greedy text as the torch reference loop."""
from __future__ import annotations

import pytest

from serving_helpers import TINY, RunningServer, chat_ids, reference_text

from sqlm.server import ServerSettings, create_app

HELLO = "the quick brown fox"


def test_tvm_native_server_matches_the_reference_loop(tiny_llama, tiny_reference):
    from conftest import TINY_ENGINE

    app = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                     settings=ServerSettings(weight_format="native", kernels="tvm"))
    model = app.state.model
    assert model.weight_format == "native" and model.ops.name == "tvm"
    ref_model, tokenizer = tiny_reference
    with RunningServer(app) as server:
        reply = server.client().chat.completions.create(model=TINY, messages=[{"role": "user", "content": HELLO}],
                                                        max_tokens=16, temperature=0)
    text, _ = reference_text(ref_model, tokenizer, chat_ids(tokenizer, HELLO), 16)
    assert reply.choices[0].message.content == text


def test_prefill_dtype_bf16_builds_the_served_model_and_pins_the_plans(tiny_llama):
    from conftest import TINY_ENGINE

    from codegen.linear import TvmQuantizedLinear
    from operators.requests import SamplingParams

    app = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                     settings=ServerSettings(weight_format="native", kernels="tvm", prefill_dtype="bf16"))
    quantized = [linear for layer in app.state.model.layers for linear in vars(layer).values()
                 if isinstance(linear, TvmQuantizedLinear)]
    assert quantized and all(linear.prefill_dtype == "bf16" for linear in quantized)
    with RunningServer(app) as server:
        plan = app.state.served.planner.plan([tuple(range(5, 105))], SamplingParams(max_tokens=4), chat=False)
        op = plan.plan.op(plan.llm_nodes()[0])
        choice = next(c for c in op.choices if c.knob == "prefill_dtype")
        assert op.knobs.prefill_dtype == "bf16" and choice.value == "bf16"
        assert choice.forced and choice.forced_by == "the running engine" and "8 mantissa bits" in choice.note
        reply = server.client().completions.create(model=TINY, prompt=HELLO * 20, max_tokens=4,
                                                   extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 4  # sampled: text may be special tokens, but four were generated


def test_prefill_dtype_does_not_change_a_dense_weight_path(tiny_llama):
    from conftest import TINY_ENGINE

    from operators.requests import SamplingParams

    app = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                     settings=ServerSettings(weight_format="fp32", kernels="tvm", prefill_dtype="bf16"))
    with RunningServer(app):
        planner = app.state.served.planner
        assert planner.ctx.running[TINY].prefill_dtype == "fp32"
        plan = planner.plan([tuple(range(5, 105))], SamplingParams(max_tokens=4), chat=False)
        choice = next(c for c in plan.plan.op(plan.llm_nodes()[0]).choices if c.knob == "prefill_dtype")
        assert choice.value == "fp32" and choice.note.startswith("does not apply: only native/tvm")


@pytest.mark.parametrize("hardware,expected", [
    ("fast quantized GEMV", "native"),  # planner/examples.py's 2-core machine with TVM timed
    ("slow quantized GEMV", "fp32"),  # the same machine where the fused GEMV crawls
])
def test_auto_weight_format_is_the_optimizers_pick_for_a_typical_request(tiny_llama, tmp_path, hardware, expected,
                                                                         machine_profile):
    from dataclasses import replace

    from conftest import TINY_ENGINE

    from planner.examples import EXAMPLE_TVM_HARDWARE

    profile = EXAMPLE_TVM_HARDWARE
    if hardware == "slow quantized GEMV":
        profile = replace(profile, quant_gemv_rate_t1=1e6, quant_gemv_rate_t4=1e6, quant_gemm_rate=1e6,
                          quant_gemm_unpack_rate=1e6)
    path = str(tmp_path / "catalog.db")
    machine_profile(profile)
    app = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY, settings=ServerSettings(catalog_path=path))
    assert app.state.model.weight_format == expected
    # a --weight-format still wins over the optimizer
    forced = create_app(str(tiny_llama.gguf_path), TINY_ENGINE, served_name=TINY,
                        settings=ServerSettings(catalog_path=path, weight_format="fp32"))
    assert forced.state.model.weight_format == "fp32"


def test_the_engine_is_the_optimizers_plan_and_forced_knobs_go_through_it(tiny_llama, tmp_path):
    import httpx

    app = create_app(str(tiny_llama.gguf_path), None, served_name=TINY,
                     settings=ServerSettings(kv_cache_memory="8MB", max_batch_size=3, kernels="torch",
                                             catalog_path=str(tmp_path / "catalog.db")))
    config = app.state.engine_config
    assert (config.max_batch_size, config.kv_cache_memory, config.kernels) == (3, 8 << 20, "torch")
    assert app.state.model.ops.name != "tvm"  # the model is built as the plan says
    text = app.state.explain_text
    assert "choice max_batch_size = 3" in text and "[forced by SET]" in text
    assert "choice kv_block_size = " in text  # what no flag forced, the optimizer chose and priced
    with RunningServer(app) as server:
        shown = httpx.get(f"{server.url}/v1/explain")
        as_json = httpx.get(f"{server.url}/v1/explain", params={"format": "json"}).json()
        bad = httpx.get(f"{server.url}/v1/explain", params={"format": "yaml"})
    assert shown.status_code == 200 and shown.text == text

    def nodes(node):
        yield node
        for child in node["children"]:
            yield from nodes(child)
    [generate] = [n for n in nodes(as_json["plan"]) if n["operator"] == "BatchedGenerate"]
    assert {c["knob"]: c["value"] for c in generate["choices"]}["max_batch_size"] == 3
    assert bad.status_code == 400 and "format" in bad.json()["error"]["message"]


def test_an_urgent_request_overtakes_queued_ones_at_the_batch_cap(tiny_llama, tmp_path):
    import threading
    import time

    import httpx

    app = create_app(str(tiny_llama.gguf_path), None, served_name=TINY,
                     settings=ServerSettings(kv_cache_memory="8MB", max_batch_size=2, kernels="torch",
                                             speculative="off",  # a looping tiny model's drafts all pass: too fast
                                             catalog_path=str(tmp_path / "catalog.db")))
    finished: dict[str, float] = {}

    def ask(name: str, priority: int, max_tokens: int, url: str):
        r = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": TINY, "prompt": f"the quick brown fox {name}", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "priority": priority})
        assert r.status_code == 200, r.text
        finished[name] = time.monotonic()

    with RunningServer(app) as server:
        lows = [threading.Thread(target=ask, args=(f"low{i}", 10, 240, server.url)) for i in range(6)]
        for t in lows:
            t.start()
            time.sleep(0.02)
        time.sleep(0.2)  # two lows run (the batch cap), four wait
        ask("urgent", 0, 8, server.url)  # lower runs first, as in vLLM
        for t in lows:
            t.join()
    lows_first = sorted(t for name, t in finished.items() if name.startswith("low") and t < finished["urgent"])
    assert len(lows_first) <= 2, finished  # it finished before the third low-priority one
