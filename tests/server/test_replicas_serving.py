"""`sqlm serve --replicas 2`: requests routed over two engine replicas (Ray actors) by the longest cached start of
their prompt, /metrics per replica, the same greedy answers as one engine, and no request lost when a replica's
process is killed in the middle of a burst."""
from __future__ import annotations

import os
import random
import signal
import threading
import time

import httpx
import pytest

from conftest import TINY_ENGINE
from serving_helpers import TINY, RunningServer, reference_text
from sqlm.server import ServerSettings, create_app

PREFIX_TOKENS, NUM_PREFIXES = 160, 8


@pytest.fixture(scope="module")
def replica_server(tiny_llama, local_ray, tmp_path_factory):
    settings = ServerSettings(catalog_path=str(tmp_path_factory.mktemp("home")), replicas=2,
                              sql_files=str(tiny_llama.hf_dir.parent), sql_write=True)
    app = create_app(str(tiny_llama.hf_dir), TINY_ENGINE, served_name=TINY, settings=settings)
    with RunningServer(app) as server:
        yield server


def complete(server, prompt: list[int], max_tokens: int, stream: bool = False) -> dict:
    body = {"model": TINY, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if not stream:
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        r.raise_for_status()
        out = r.json()
        return {"text": out["choices"][0]["text"], "cached": out["usage"]["prompt_tokens_details"]["cached_tokens"]}
    text = ""
    with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                import json

                text += "".join(c["text"] for c in json.loads(line[6:])["choices"])
    return {"text": text}


def replicas(server) -> list[dict]:
    return httpx.get(f"{server.url}/health", timeout=30).json()["replicas"]


def test_repeated_prefixes_go_to_the_replica_that_caches_them(replica_server, tiny_reference):
    model, tokenizer = tiny_reference
    rng = random.Random(7)
    prefixes = [[rng.randrange(3, 200) for _ in range(PREFIX_TOKENS)] for _ in range(NUM_PREFIXES)]
    asks = [(p, round_) for round_ in range(3) for p in range(NUM_PREFIXES)]
    answers = {}
    for p, round_ in asks:
        prompt = prefixes[p] + [10 + round_, 11 + p]
        answers[p, round_] = complete(replica_server, prompt, 4), prompt

    repeats = [answers[p, r][0]["cached"] for p, r in answers if r > 0]
    served_from_cache = sum(cached >= PREFIX_TOKENS - TINY_ENGINE.kv_block_size for cached in repeats)
    assert served_from_cache >= 14, repeats
    for (p, r), (got, prompt) in answers.items():  # the same greedy answers as one engine
        if r == 2:
            assert got["text"] == reference_text(model, tokenizer, prompt, 4, ignore_eos=True)[0]
    # both replicas did work, and /metrics says which did what
    for replica in ("0", "1"):
        assert replica_server.metric("sqlm_engine_steps", replica=replica) > 0
        assert replica_server.metric("sqlm_replica_up", replica=replica) == 1
    assert replica_server.metric("sqlm_router_requests_total", reason="cache") >= 14
    assert all(r["up"] for r in replicas(replica_server))
    assert len({r["pid"] for r in replicas(replica_server)} | {os.getpid()}) == 3  # two processes of their own


def test_sql_model_calls_split_over_the_replicas(replica_server, tiny_llama):
    def sql(query: str) -> httpx.Response:
        r = httpx.post(f"{replica_server.url}/v1/sql", json={"query": query}, timeout=120)
        assert r.status_code == 200, r.text
        return r

    sql(f"CREATE OR REPLACE MODEL {TINY} FROM '{tiny_llama.hf_dir}'")
    steps = [replica_server.metric("sqlm_engine_steps", replica=k) for k in ("0", "1")]
    rows = sql(f"SELECT i, generate('{TINY}', 'fox ' || i, max_tokens => 6, temperature => 0) AS g "
               f"FROM (VALUES (0), (1), (2), (3), (4), (5), (6), (7)) AS t(i) ORDER BY i").json()["rows"]
    chat = replica_server.client().chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "fox 5"}], max_tokens=6, temperature=0)
    assert rows[5]["g"] == chat.choices[0].message.content
    assert all(replica_server.metric("sqlm_engine_steps", replica=k) > s for k, s in zip(("0", "1"), steps))


def test_killing_a_replica_mid_burst_loses_no_request(replica_server, tiny_reference):
    model, tokenizer = tiny_reference
    rng = random.Random(11)
    prompts = [[rng.randrange(3, 200) for _ in range(24)] for _ in range(12)]
    max_tokens = 200
    expected = [reference_text(model, tokenizer, p, max_tokens, ignore_eos=True)[0] for p in prompts]
    victim = replicas(replica_server)[0]
    failures_before = replica_server.metric("sqlm_replica_failures_total")

    results: list[dict | BaseException | None] = [None] * len(prompts)

    def ask(i: int) -> None:
        try:
            results[i] = complete(replica_server, prompts[i], max_tokens, stream=i % 2 == 0)
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while replica_server.metric("sqlm_num_requests_running", replica=str(victim["replica"])) == 0:
        assert time.monotonic() < deadline, "the burst never reached the replica"
        time.sleep(0.01)
    os.kill(victim["pid"], signal.SIGKILL)
    for t in threads:
        t.join(180)

    assert [r["text"] if isinstance(r, dict) else r for r in results] == expected  # none lost, none changed
    assert replica_server.metric("sqlm_replica_failures_total") > failures_before
    deadline = time.monotonic() + 120  # Ray restarts the replica and the router uses it again
    while not all(r["up"] for r in replicas(replica_server)):
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(0.5)
    assert replicas(replica_server)[0]["pid"] != victim["pid"]


@pytest.fixture(scope="module")
def disaggregated_server(tiny_llama, local_ray, tmp_path_factory):
    settings = ServerSettings(catalog_path=str(tmp_path_factory.mktemp("home")), replicas=2, disaggregate=True)
    app = create_app(str(tiny_llama.hf_dir), TINY_ENGINE, served_name=TINY, settings=settings)
    with RunningServer(app) as server:
        yield server


def test_disaggregated_prefill_hands_the_prompts_kv_to_the_decode_replica(disaggregated_server, tiny_reference):
    model, tokenizer = tiny_reference
    assert [r["role"] for r in replicas(disaggregated_server)] == ["prefill", "decode"]
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 200) for _ in range(100)] for _ in range(4)]
    for i, prompt in enumerate(prompts):
        got = complete(disaggregated_server, prompt, 8, stream=i % 2 == 1)
        assert got["text"] == reference_text(model, tokenizer, prompt, 8, ignore_eos=True)[0]
        if "cached" in got:  # a prompt the decode replica never saw: its whole blocks came from the prefill replica
            assert got["cached"] == len(prompt) // TINY_ENGINE.kv_block_size * TINY_ENGINE.kv_block_size
    # the prefill replica computed the prompts; the decode replica found them cached and decoded
    assert disaggregated_server.metric("sqlm_prompt_tokens_total") > 0
    assert disaggregated_server.metric("sqlm_engine_steps", replica="0") >= len(prompts)
    assert disaggregated_server.metric("sqlm_prefix_cache_hit_tokens", replica="1") >= 4 * 96
    assert disaggregated_server.metric("sqlm_prefix_cache_hit_tokens", replica="0") == 0


def test_a_dead_prefill_replica_costs_only_the_handoff(disaggregated_server, tiny_reference):
    model, tokenizer = tiny_reference
    prefill = replicas(disaggregated_server)[0]
    os.kill(prefill["pid"], signal.SIGKILL)
    prompt = [random.Random(9).randrange(3, 200) for _ in range(90)]
    got = complete(disaggregated_server, prompt, 6)  # the decode replica computes the prompt if no KV comes
    assert got["text"] == reference_text(model, tokenizer, prompt, 6, ignore_eos=True)[0]
    deadline = time.monotonic() + 120
    while not all(r["up"] for r in replicas(disaggregated_server)) or \
            replicas(disaggregated_server)[0]["pid"] == prefill["pid"]:
        assert time.monotonic() < deadline, "the prefill replica did not come back"
        time.sleep(0.5)
    again = [random.Random(10).randrange(3, 200) for _ in range(90)]
    got = complete(disaggregated_server, again, 6)  # and hands KV over again
    assert got["cached"] == 80 and got["text"] == reference_text(model, tokenizer, again, 6, ignore_eos=True)[0]
