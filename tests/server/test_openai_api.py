"""The official openai client against `sqlm serve`: chat and completions, whole and streamed."""
from __future__ import annotations

import math

import httpx
import torch

from serving_helpers import TINY, chat_ids, reference_text

HELLO = [{"role": "user", "content": "the quick brown fox"}]


def streamed_chat(client, **kwargs) -> tuple[list[str], list, object]:
    """(text per choice, finish reason per choice, usage) from a streamed chat completion."""
    n = kwargs.get("n", 1)
    texts, reasons, usage = [""] * n, [None] * n, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    return texts, reasons, usage


def test_models_lists_the_served_model(tiny_server):
    models = tiny_server.client().models.list()
    assert [m.id for m in models.data] == [TINY]


def test_health(tiny_server):
    assert httpx.get(f"{tiny_server.url}/health").json() == {"status": "ok"}


def test_greedy_chat_equals_the_reference_loop(tiny_server, tiny_reference):
    model, tokenizer = tiny_reference
    reply = tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=24, temperature=0)
    text, reason = reference_text(model, tokenizer, chat_ids(tokenizer, HELLO[0]["content"]), 24)
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == reason
    assert reply.usage.prompt_tokens == len(chat_ids(tokenizer, HELLO[0]["content"]))
    assert 1 <= reply.usage.completion_tokens <= 24


def test_streamed_chat_equals_non_streamed_for_greedy(tiny_server):
    client = tiny_server.client()
    whole = client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=40, temperature=0)
    texts, reasons, usage = streamed_chat(client, model=TINY, messages=HELLO, max_tokens=40, temperature=0)
    assert texts == [whole.choices[0].message.content]
    assert reasons == [whole.choices[0].finish_reason]
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_stream_starts_with_role_and_ends_with_done(tiny_server):
    with httpx.stream("POST", f"{tiny_server.url}/v1/chat/completions",
                      json={"model": TINY, "messages": HELLO, "max_tokens": 5, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert '"role":"assistant"' in lines[0]
    assert lines[-1] == "data: [DONE]"
    assert '"finish_reason"' in lines[-2]


def test_completions_whole_and_streamed_agree(tiny_server, tiny_reference):
    model, tokenizer = tiny_reference
    client = tiny_server.client()
    whole = client.completions.create(model=TINY, prompt="the lazy dog", max_tokens=20, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TINY, prompt="the lazy dog", max_tokens=20, temperature=0, stream=True) if c.choices)
    text, _ = reference_text(model, tokenizer, tokenizer.encode("the lazy dog"), 20)
    assert whole.choices[0].text == streamed == text
    assert whole.object == "text_completion"


def test_completions_accept_token_ids_and_several_prompts(tiny_server):
    client = tiny_server.client()
    one = client.completions.create(model=TINY, prompt="the lazy dog", max_tokens=8, temperature=0)
    tokenizer = tiny_server.app.state.served.tokenizer
    other = client.completions.create(model=TINY, prompt="the quick", max_tokens=8, temperature=0)
    both = client.completions.create(model=TINY, prompt=[tokenizer.encode("the lazy dog"), tokenizer.encode("the quick")],
                                     max_tokens=8, temperature=0, n=2)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert [c.text for c in both.choices] == [one.choices[0].text] * 2 + [other.choices[0].text] * 2
    assert both.usage.prompt_tokens == len(tokenizer.encode("the lazy dog")) + len(tokenizer.encode("the quick"))


def test_stop_string_cuts_the_text_in_both_modes(tiny_server):
    client = tiny_server.client()
    free = client.completions.create(model=TINY, prompt="the lazy dog", max_tokens=30, temperature=0).choices[0].text
    stop = free[5:7]  # a string the greedy continuation is known to contain
    assert stop and stop in free
    whole = client.completions.create(model=TINY, prompt="the lazy dog", max_tokens=30, temperature=0, stop=[stop])
    chunks = list(client.completions.create(model=TINY, prompt="the lazy dog", max_tokens=30, temperature=0,
                                            stop=[stop], stream=True))
    assert whole.choices[0].text == free[: free.index(stop)]
    assert whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"
    # logprobs: the tokens whose text the stop string cut are not listed, in either mode
    with_lp = client.completions.create(model=TINY, prompt="the lazy dog", max_tokens=30, temperature=0, stop=[stop],
                                        logprobs=1)
    lp = with_lp.choices[0].logprobs
    text = with_lp.choices[0].text
    assert lp.tokens and all(offset < len(text) for offset in lp.text_offset) and "".join(lp.tokens).startswith(text)
    streamed = list(client.completions.create(model=TINY, prompt="the lazy dog", max_tokens=30, temperature=0,
                                              stop=[stop], logprobs=1, stream=True))
    assert [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == lp.tokens


def test_n_choices_count_their_prompt_and_its_cached_tokens_once(tiny_server):
    reply = tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=2, temperature=0, n=3)
    assert reply.usage.prompt_tokens_details.cached_tokens <= reply.usage.prompt_tokens


def test_n_choices_with_a_seed_are_reproducible(tiny_server):
    client = tiny_server.client()
    kwargs = dict(model=TINY, messages=HELLO, max_tokens=16, temperature=1.0, n=3, seed=7)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert len({c.message.content for c in first.choices}) > 1  # each choice samples with its own seed
    texts, _, _ = streamed_chat(client, **kwargs)
    assert texts == [c.message.content for c in first.choices]


def test_chat_logprobs_are_the_models_distribution(tiny_server, tiny_reference):
    from operators.llama import ContiguousKVCache
    from runtime.generate import generate
    from operators.requests import GenerationRequest, SamplingParams

    model, tokenizer = tiny_reference
    reply = tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=6, temperature=0,
                                                         logprobs=True, top_logprobs=3)
    prompt = chat_ids(tokenizer, HELLO[0]["content"])
    expected = generate(model, tokenizer, GenerationRequest(tuple(prompt), SamplingParams(max_tokens=6)))
    content = reply.choices[0].logprobs.content
    visible = [t for t in expected.output_token_ids if t not in tokenizer.eos_token_ids]
    assert len(content) == len(visible)
    # Every position's distribution from one forward over prompt + output.
    ids = prompt + expected.output_token_ids
    with torch.inference_mode():
        hidden = model.forward(torch.tensor(ids), torch.arange(len(ids)), ContiguousKVCache(model.config, len(ids)))
        logprobs = torch.log_softmax(model.compute_logits(hidden[len(prompt) - 1:-1]).float(), dim=-1)  # [out, V]
    for i, entry in enumerate(content):
        token = expected.output_token_ids[i]
        assert entry.token == tokenizer.decode([token], skip_special_tokens=False)
        assert math.isclose(entry.logprob, float(logprobs[i, token]), abs_tol=1e-3)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == entry.logprob  # greedy picks the most likely token
        assert all(a.logprob >= b.logprob for a, b in zip(entry.top_logprobs, entry.top_logprobs[1:]))


def test_streamed_chat_carries_logprobs(tiny_server):
    chunks = list(tiny_server.client().chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2, stream=True,
        extra_body={"ignore_eos": True}))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 5
    assert all(len(e.top_logprobs) == 2 for e in entries)


def test_completion_logprobs(tiny_server):
    reply = tiny_server.client().completions.create(model=TINY, prompt="the quick", max_tokens=4, temperature=0,
                                                    logprobs=2, extra_body={"ignore_eos": True})
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 4
    assert all(v <= 0 for v in lp.token_logprobs)
    assert lp.text_offset[0] == 0


def test_ignore_eos_generates_exactly_max_tokens(tiny_server):
    reply = tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=50, temperature=0,
                                                         extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 50
    assert reply.choices[0].finish_reason == "length"


def test_metrics_count_requests_and_tokens(tiny_server):
    before = tiny_server.metrics()
    reply = tiny_server.client().chat.completions.create(model=TINY, messages=HELLO, max_tokens=7, temperature=0,
                                                         extra_body={"ignore_eos": True})
    after = tiny_server.metrics()
    assert after["sqlm_generation_tokens_total"] - before.get("sqlm_generation_tokens_total", 0) == 7
    assert after["sqlm_time_to_first_token_seconds_count"] - before.get("sqlm_time_to_first_token_seconds_count", 0) == 1
    assert after["sqlm_time_per_output_token_seconds_count"] > before.get("sqlm_time_per_output_token_seconds_count", 0)
    assert tiny_server.metric("sqlm_http_requests_total", endpoint="/v1/chat/completions", status="200") >= 1
    assert after["sqlm_kv_blocks_total"] > 0
    assert 0 <= after["sqlm_prefix_cache_hit_rate"] <= 1
    assert reply.usage.prompt_tokens_details.cached_tokens >= 0


def test_prefix_cache_hits_show_in_usage_and_metrics(tiny_server):
    client = tiny_server.client()
    long_prompt = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog. " * 4}]
    client.chat.completions.create(model=TINY, messages=long_prompt, max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=TINY, messages=long_prompt, max_tokens=2, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= 16  # at least one full KV block reused
    assert tiny_server.metrics()["sqlm_prefix_cache_hit_tokens"] >= 16


def test_multi_turn_messages_and_content_parts_go_through_the_chat_template(tiny_server):
    tokenizer = tiny_server.app.state.served.tokenizer
    messages = [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "the quick "}, {"type": "text", "text": "fox"}]},
                {"role": "assistant", "content": "jumps"},
                {"role": "user", "content": "over the lazy dog"}]
    reply = tiny_server.client().chat.completions.create(model=TINY, messages=messages, max_tokens=2)
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "the quick fox"},
                                              {"role": "assistant", "content": "jumps"},
                                              {"role": "user", "content": "over the lazy dog"}])
    assert reply.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))


def test_structured_outputs_over_http(tiny_server):
    import json as _json
    import re as _re

    schema = {"type": "object", "additionalProperties": False, "required": ["n"],
              "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}}
    client = tiny_server.client()
    reply = client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "a number"}], max_tokens=24,
                                           response_format={"type": "json_schema",
                                                            "json_schema": {"name": "n", "schema": schema}})
    assert 0 <= _json.loads(reply.choices[0].message.content)["n"] <= 9
    reply = client.completions.create(model=TINY, prompt="hi", max_tokens=12,
                                      extra_body={"response_format": {"type": "json_object"}})
    text = reply.choices[0].text
    assert reply.choices[0].finish_reason == "length" or isinstance(_json.loads(text), dict)
    reply = client.completions.create(model=TINY, prompt="hi", max_tokens=8,
                                      extra_body={"structured_outputs": {"choice": ["left", "right"]}})
    assert reply.choices[0].text in ("left", "right")
    reply = client.completions.create(model=TINY, prompt="hi", max_tokens=8, stream=True,
                                      extra_body={"structured_outputs": {"regex": "[ab]{4}"}})
    assert _re.fullmatch("[ab]{4}", "".join(chunk.choices[0].text for chunk in reply))


def test_an_invalid_constraint_is_a_400_naming_it(tiny_server):
    import httpx

    r = httpx.post(f"{tiny_server.url}/v1/completions", json={"model": TINY, "prompt": "x", "max_tokens": 2,
                                                              "structured_outputs": {"regex": "("}})
    assert r.status_code == 400 and "unclosed group" in r.text


def test_beam_search_over_http_finds_likelier_text_than_greedy(tiny_server):
    import httpx

    body = {"model": TINY, "prompt": "the quick brown", "max_tokens": 5, "ignore_eos": False}
    greedy = httpx.post(f"{tiny_server.url}/v1/completions", json={**body, "temperature": 0, "logprobs": 0}).json()
    beams = httpx.post(f"{tiny_server.url}/v1/completions",
                       json={**body, "use_beam_search": True, "best_of": 4, "n": 2, "length_penalty": 0.0,
                             "logprobs": 0}).json()
    assert [c["index"] for c in beams["choices"]] == [0, 1]

    def summed(choice):
        return sum(choice["logprobs"]["token_logprobs"])
    greedy_choice = greedy["choices"][0]
    if greedy_choice["finish_reason"] == "length" and beams["choices"][0]["finish_reason"] == "length":
        assert summed(beams["choices"][0]) >= summed(greedy_choice) - 1e-3
    assert summed(beams["choices"][0]) >= summed(beams["choices"][1]) - 1e-3
    r = httpx.post(f"{tiny_server.url}/v1/completions", json={**body, "use_beam_search": True, "stream": True})
    assert r.status_code == 400 and "stream" in r.text
    r = httpx.post(f"{tiny_server.url}/v1/completions", json={**body, "best_of": 3})
    assert r.status_code == 400 and "use_beam_search" in r.text


def test_beam_search_on_the_chat_endpoint(tiny_server):
    reply = tiny_server.client().chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "hello"}], max_tokens=4, n=2,
        extra_body={"use_beam_search": True})
    assert len(reply.choices) == 2 and all(c.finish_reason in ("stop", "length") for c in reply.choices)
    assert reply.usage.completion_tokens >= 1
