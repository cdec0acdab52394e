"""End to end on the real model: outputs equal the reference loop, and a client that goes away frees its KV blocks."""
from __future__ import annotations

import time

import httpx
import pytest

from serving_helpers import chat_ids, reference_text

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MODEL = "smollm2"


def wait_until_idle(server, deadline_seconds: float = 60.0) -> dict[str, float]:
    """Poll /metrics until no request runs or waits (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        metrics = server.metrics()
        if metrics["sqlm_num_requests_running"] == 0 and metrics["sqlm_num_requests_waiting"] == 0:
            return metrics
        if time.monotonic() > deadline:
            pytest.fail(f"the engine still has work after {deadline_seconds}s: {metrics}")
        time.sleep(0.1)


def test_greedy_chat_equals_the_reference_loop(smollm2_server):
    model, tokenizer = smollm2_server.app.state.model, smollm2_server.app.state.served.tokenizer
    reply = smollm2_server.client().chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12,
                                                            temperature=0)
    text, reason = reference_text(model, tokenizer, chat_ids(tokenizer, QUESTION[0]["content"]), 12)
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == reason
    assert "Paris" in text


def test_streamed_text_equals_non_streamed(smollm2_server):
    client = smollm2_server.client()
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stream=True) if c.choices)
    assert streamed == whole.choices[0].message.content


def test_disconnect_mid_stream_cancels_and_frees_blocks(smollm2_server):
    server = smollm2_server
    before = wait_until_idle(server)
    assert before["sqlm_kv_blocks_active"] == 0
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4000, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()  # held, so the connection stays open until it is closed below
        tokens = 0
        for line in lines:
            tokens += '"content":"' in line and '"role"' not in line
            if tokens >= 3:
                break
        during = server.metrics()
        lines.close()  # the body unread: the connection closes, the client is gone
    after = wait_until_idle(server)
    assert during["sqlm_num_requests_running"] == 1
    assert during["sqlm_kv_blocks_active"] >= 1
    assert after["sqlm_kv_blocks_active"] == 0
    assert server.metric("sqlm_requests_finished_total", finish_reason="cancelled") >= 1
    generated = after["sqlm_generation_tokens_total"] - before["sqlm_generation_tokens_total"]
    assert 3 <= generated < 4000  # the tokens it had received, not the 4000 it asked for


def test_disconnect_of_a_non_streaming_request_cancels_it(smollm2_server):
    server = smollm2_server
    before = wait_until_idle(server)
    cancelled = server.metric("sqlm_requests_finished_total", finish_reason="cancelled")
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4000, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=2.0))
    after = wait_until_idle(server)
    assert after["sqlm_kv_blocks_active"] == 0
    assert server.metric("sqlm_requests_finished_total", finish_reason="cancelled") == cancelled + 1
    assert after["sqlm_generation_tokens_total"] - before["sqlm_generation_tokens_total"] < 4000


def test_chat_without_max_tokens_runs_to_eos(smollm2_server):
    # The KV pool here holds fewer tokens than the 8192-token context: the default length must fit the pool.
    reply = smollm2_server.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert reply.choices[0].finish_reason == "stop"
    assert "Paris" in reply.choices[0].message.content
