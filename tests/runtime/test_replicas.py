"""Engine replicas as Ray actors: a query's rows split over N engines in their own processes, prompts that share
a prefix on one replica, the same greedy answers as one engine, and no request lost when a replica dies."""
from __future__ import annotations

import os
import signal

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from operators.requests import GenerationRequest, SamplingParams
from runtime.replicas import partition

ray = pytest.importorskip("ray")


def requests_of(prompts: list[tuple[int, ...]], max_tokens: int = 4) -> list[GenerationRequest]:
    return [GenerationRequest(p, SamplingParams(max_tokens=max_tokens)) for p in prompts]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(3, 9), min_size=1, max_size=6).map(tuple), min_size=0, max_size=30),
       st.integers(1, 5))
def test_partition_runs_every_request_once_in_prompt_order_ranges(prompts, n):
    reqs = requests_of(prompts)
    parts = partition(reqs, n)
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(reqs)))
    assert len(parts) <= max(n, 1) and all(parts[1:])
    assert [reqs[i].prompt_token_ids for i in flat] == sorted(r.prompt_token_ids for r in reqs)  # contiguous ranges


def test_requests_sharing_a_prefix_land_on_one_replica():
    a, b = (5, 5, 5, 5), (7, 7, 7, 7)
    reqs = requests_of([a + (i,) for i in range(6)] + [b + (i,) for i in range(6)])
    first, second = partition(reqs, 2)
    assert {reqs[i].prompt_token_ids[:4] for i in first} == {a}
    assert {reqs[i].prompt_token_ids[:4] for i in second} == {b}


@pytest.fixture
def con(tmp_path, tiny_llama, local_ray):
    import sqlm

    c = sqlm.connect(tmp_path / "home")
    c.sql(f"CREATE MODEL tiny FROM '{tiny_llama.gguf_path}'")
    prefixes = ["the quick brown fox", "a b c d e f", "héllo wörld"]
    c.register("t", pa.table({"id": list(range(24)), "body": [f"{prefixes[i % 3]} {i}" for i in range(24)]}))
    yield c
    c.close()


QUERY = "SELECT id, generate('tiny', body, max_tokens => 8, temperature => 0) AS g FROM t ORDER BY id"


def replica_actuals(con):
    (llm,) = [a.llm for a in con.last_actuals.values() if a.llm is not None]
    return llm


def test_two_replicas_answer_as_one_engine_does(con):
    one = con.sql(QUERY).arrow().column("g").to_pylist()
    con.sql("SET replicas = 2")
    assert "choice replicas = 2" in con.explain(QUERY) and "[forced by SET]" in con.explain(QUERY)
    progress = []
    con.on_progress = lambda done, total, tokens: progress.append((done, total))
    two = con.sql(QUERY).arrow().column("g").to_pylist()
    assert two == one
    assert len(progress) == 2 and progress[-1] == (24, 24)  # as each replica's range finishes
    llm = replica_actuals(con)
    assert len(llm.replica_rows) == 2 and sum(llm.replica_rows) == 24 and min(llm.replica_rows) > 0
    assert len(set(llm.replica_pids)) == 2 and os.getpid() not in llm.replica_pids  # two live actor processes
    assert "replicas: " in con.explain_last()
    # Ray's public state API needs its dashboard, which a small local Ray leaves out: the GCS's table instead
    live = [a for a in ray._private.state.actors().values() if a["State"] == "ALIVE" and "Replica" in a["ActorClassName"]]
    assert len(live) >= 2


def test_auto_keeps_one_engine_on_one_machine(con):
    text = con.explain(QUERY)
    assert "choice replicas = 1" in text and "replicas would split this machine's cores" in text


def test_a_killed_replica_loses_no_request(con):
    expected = con.sql(QUERY).arrow().column("g").to_pylist()
    con.sql("SET replicas = 2")
    con.sql(QUERY)
    victim = replica_actuals(con).replica_pids[0]
    os.kill(victim, signal.SIGKILL)
    assert con.sql(QUERY).arrow().column("g").to_pylist() == expected
    assert victim not in replica_actuals(con).replica_pids
