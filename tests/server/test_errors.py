"""Bad input gets an OpenAI-style JSON error with a 4xx code, and the server keeps serving."""
from __future__ import annotations

import httpx
import openai
import pytest

from serving_helpers import TINY

HELLO = [{"role": "user", "content": "hello"}]


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=30, **kwargs)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


def test_invalid_json(tiny_server):
    r = post(tiny_server, "/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
             headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_json"


def test_body_that_is_not_an_object(tiny_server):
    r = post(tiny_server, "/v1/chat/completions", json=["not", "an", "object"])
    assert r.status_code == 400
    error_of(r)


def test_unknown_model_is_404_through_the_client(tiny_server):
    with pytest.raises(openai.NotFoundError) as e:
        tiny_server.client().chat.completions.create(model="gpt-9", messages=HELLO)
    assert e.value.body["code"] == "model_not_found"
    assert "gpt-9" in e.value.body["message"]


def test_prompt_longer_than_the_context(tiny_server):
    long = "the quick brown fox jumps over the lazy dog " * 80  # far past the tiny model's 256 tokens
    with pytest.raises(openai.BadRequestError) as e:
        tiny_server.client().chat.completions.create(model=TINY, messages=[{"role": "user", "content": long}])
    assert e.value.body["code"] == "context_length_exceeded"
    assert "256" in e.value.body["message"]


def test_prompt_plus_max_tokens_past_the_context(tiny_server):
    with pytest.raises(openai.BadRequestError) as e:
        tiny_server.client().completions.create(model=TINY, prompt="the quick", max_tokens=1000)
    assert e.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.5), ("temperature", 3.0), ("top_p", 0.0), ("top_p", 1.5), ("n", 0), ("n", 100),
    ("max_tokens", 0), ("max_tokens", "many"), ("stop", ["a", "b", "c", "d", "e"]), ("top_logprobs", 50),
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0), ("min_p", 1.5),
    ("logit_bias", {"not a token": 1}), ("logit_bias", {"5": 500}), ("messages", []), ("seed", "x"),
    ("logit_bias", {"\u00b2": 5}), ("logit_bias", {"\uff11\uff12": 5}), ("seed", 2**64), ("seed", -(2**63) - 1),
    ("max_tokens", "5"), ("temperature", "0.5"), ("max_tokens", 5.0), ("stream", "yes"), ("length_penalty", 2.0),
    ("stream_options", {"include_usage": True}),
])
def test_bad_parameter_values(tiny_server, field, value):
    body = {"model": TINY, "messages": HELLO, "max_tokens": 4, field: value}
    if field == "top_logprobs":
        body["logprobs"] = True
    r = post(tiny_server, "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["type"] == "invalid_request_error"
    assert field in error["message"] or field in (error["param"] or "")


def test_bad_parameter_through_the_client(tiny_server):
    with pytest.raises(openai.BadRequestError) as e:
        tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, temperature=-1)
    assert e.value.body["param"] == "temperature"


def test_bad_message_role(tiny_server):
    r = post(tiny_server, "/v1/chat/completions", json={"model": TINY, "messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400
    assert "messages" in error_of(r)["param"]


def test_bad_completion_prompts(tiny_server):
    for prompt in ([], [[]], [1, "a"], {"text": "x"}, [10**9]):
        r = post(tiny_server, "/v1/completions", json={"model": TINY, "prompt": prompt, "max_tokens": 2})
        assert r.status_code == 400, (prompt, r.text)
        assert error_of(r)["param"] == "prompt"


def test_stream_requests_fail_before_streaming(tiny_server):
    r = post(tiny_server, "/v1/chat/completions", json={"model": "nope", "messages": HELLO, "stream": True})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")


def test_unknown_route_and_wrong_method(tiny_server):
    r = httpx.get(f"{tiny_server.url}/v1/nothing-here")
    assert r.status_code == 404
    error_of(r)
    r = httpx.get(f"{tiny_server.url}/v1/chat/completions")
    assert r.status_code == 405
    error_of(r)


def test_server_keeps_serving_after_bad_requests(tiny_server):
    for _ in range(3):
        post(tiny_server, "/v1/chat/completions", content=b"{{{", headers={"content-type": "application/json"})
        post(tiny_server, "/v1/completions", json={"model": TINY, "prompt": "x", "max_tokens": 10**6})
    assert httpx.get(f"{tiny_server.url}/health").json() == {"status": "ok"}
    reply = tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert tiny_server.metric("sqlm_http_requests_total", endpoint="/v1/chat/completions", status="400") >= 3


class FailOnce:
    """Fault injection: the engine's next model run raises, as a kernel bug would."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, batch):
        del self.runner.run  # the class's own method again from the next step on
        raise RuntimeError("injected kernel failure")


def test_an_engine_failure_fails_its_requests_and_the_server_goes_on(tiny_server):
    engine = tiny_server.app.state.engine_loop.engine
    failures = tiny_server.metrics()["sqlm_engine_step_failures"]
    engine.runner.run = FailOnce(engine.runner)
    r = post(tiny_server, "/v1/chat/completions", json={"model": TINY, "messages": HELLO, "max_tokens": 8})
    assert r.status_code == 503
    assert "injected kernel failure" in error_of(r)["message"]

    engine.runner.run = FailOnce(engine.runner)
    with pytest.raises(openai.APIError, match="injected kernel failure"):
        list(tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=8, stream=True))

    reply = tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=8)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert tiny_server.metrics()["sqlm_kv_blocks_active"] == 0
    assert tiny_server.metrics()["sqlm_engine_step_failures"] == failures + 2
    assert httpx.get(f"{tiny_server.url}/health").json() == {"status": "ok"}


@pytest.mark.parametrize("field,value", [
    ("guided_json", {"type": "object"}),
    ("tool_choice", "auto"), ("functions", [{"name": "f"}]), ("min_tokens", 4),
])
def test_a_field_sqlm_does_not_honour_is_a_400_naming_it(tiny_server, field, value):
    for path, body in (("/v1/chat/completions", {"messages": HELLO}), ("/v1/completions", {"prompt": "hello"})):
        r = post(tiny_server, path, json={"model": TINY, "max_tokens": 2, **body, field: value})
        assert r.status_code == 400
        error = error_of(r)
        assert error["param"] == field and error["code"] == "unsupported_parameter" and field in error["message"]


def test_a_lone_surrogate_is_a_400_and_the_server_keeps_answering(tiny_server):
    raw = b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    r = post(tiny_server, "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in error_of(r)["message"]
    r = post(tiny_server, "/v1/completions", content=raw.replace(b'"messages": [{"role": "user", "content"', b'"prompt"')
             .replace(b'}]}', b'}'), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in error_of(r)["message"]
    assert post(tiny_server, "/v1/chat/completions", json={"model": TINY, "messages": HELLO, "max_tokens": 2}).status_code == 200


def test_too_many_sequences_in_one_request_is_a_400(tiny_server):
    r = post(tiny_server, "/v1/completions", json={"model": TINY, "prompt": ["hi"] * 3000, "n": 16, "max_tokens": 2})
    assert r.status_code == 400
    error = error_of(r)
    assert error["param"] == "prompt" and "48000 sequences" in error["message"]


@pytest.mark.parametrize("extra,param", [
    ({"use_beam_search": True, "stream": True}, "stream"), ({"best_of": 3}, "best_of"),
    ({"use_beam_search": True, "best_of": 2, "logit_bias": {"5": -100}}, "logit_bias"),
    ({"use_beam_search": True, "best_of": 2, "temperature": 0.7}, "temperature"),
    ({"use_beam_search": True, "best_of": 2, "repetition_penalty": 1.2}, "repetition_penalty"),
    ({"use_beam_search": True, "best_of": 2, "ignore_eos": True}, "ignore_eos"),
    ({"ignore_eos": True, "response_format": {"type": "json_object"}}, "ignore_eos"),
    ({"structured_outputs": {"regex": "("}}, "structured_outputs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}}, "response_format"),
])
def test_cross_field_errors_name_their_parameter(tiny_server, extra, param):
    r = post(tiny_server, "/v1/completions", json={"model": TINY, "prompt": "hi", "max_tokens": 2, **extra})
    assert r.status_code == 400 and error_of(r)["param"] == param, r.text


@pytest.mark.parametrize("message, where", [
    ({"role": "user", "content": "hi", "name": "bob"}, "name"),
    ({"role": "assistant", "content": "hi", "tool_calls": []}, "tool_calls"),
    ({"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]}, "cache_control"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "image_url"),
])
def test_message_fields_a_chat_template_cannot_carry_are_refused_by_name(tiny_server, message, where):
    r = post(tiny_server, "/v1/chat/completions", json={"model": TINY, "max_tokens": 2, "messages": [message]})
    assert r.status_code == 400 and where in r.text, r.text


@pytest.mark.parametrize("extreme", [{"temperature": 1e-40}, {"top_p": 1e-300}, {"repetition_penalty": 1e-300},
                                     {"temperature": 2.0, "min_p": 1.0}])
def test_extreme_sampling_values_never_fail_the_batch(tiny_server, extreme):
    """Sampled together with greedy requests in one engine step: every request gets its answer."""
    import concurrent.futures

    def ask(extra):
        return post(tiny_server, "/v1/chat/completions",
                    json={"model": TINY, "messages": HELLO, "max_tokens": 6, "seed": 1, **extra})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(ask, [extreme, {"temperature": 0}, {"temperature": 0}, extreme]))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
