"""The engine's outputs equal the reference single-sequence loop, whatever the batching, paging and memory."""
from __future__ import annotations

import math
from dataclasses import replace
import random

import pytest
import torch

from operators.llama import ContiguousKVCache
from runtime.engine import Engine, KVCacheTooSmallError
from operators.engine_config import EngineConfig
from runtime.generate import generate
from runtime.model_runner import PagedKVCache
from operators.requests import GenerationRequest, SamplingParams, ScoreRequest



def random_requests(seed: int, num: int, vocab_size: int, max_prompt: int = 40, max_new: int = 12,
                    shared_prefix: tuple[int, ...] = ()) -> list[GenerationRequest]:
    """Greedy requests of random lengths (EOS ignored, so every request runs its full length)."""
    rng = random.Random(seed)
    return [GenerationRequest(shared_prefix + tuple(rng.randrange(3, vocab_size) for _ in range(rng.randint(1, max_prompt))),
                              SamplingParams(max_tokens=rng.randint(1, max_new), ignore_eos=True), request_id=f"r{i}")
            for i in range(num)]


def reference(model, tokenizer, requests):
    return [generate(model, tokenizer, r) for r in requests]


def assert_same_outputs(results, expected):
    for got, want in zip(results, expected, strict=True):
        assert got.output_token_ids == want.output_token_ids, got.request_id
        assert got.text == want.text
        assert got.finish_reason == want.finish_reason


@pytest.fixture(scope="module")
def mixed(tiny):
    model, tokenizer = tiny
    requests = random_requests(seed=1, num=10, vocab_size=model.config.vocab_size)
    return requests, reference(model, tokenizer, requests)


@pytest.mark.parametrize("block_size, chunk, batch_cap", [
    (1, 7, 3), (32, 5, 4), (16, 16, 2), (32, 64, 1), (16, 3, 8), (32, 33, 10),  # the defaults run everywhere else
])
def test_greedy_outputs_equal_reference(tiny, mixed, block_size, chunk, batch_cap):
    model, tokenizer = tiny
    requests, expected = mixed
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, kv_block_size=block_size,
                                                   prefill_chunk_tokens=chunk, max_batch_size=batch_cap))
    assert_same_outputs(engine.generate(requests), expected)
    assert engine.stats.num_generated_tokens == sum(len(r.output_token_ids) for r in expected)
    assert engine.kv.pool.num_used == engine.kv.prefix_cache.num_blocks  # only the tree keeps blocks


def test_small_kv_budget_preempts_and_still_matches(tiny, mixed):
    model, tokenizer = tiny
    requests, expected = mixed
    block_bytes = PagedKVCache.bytes_per_block(model.config, 4)
    budget = 16 * block_bytes + block_bytes // 2  # 16 blocks of 4 tokens: far less than the batch needs
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=budget, kv_block_size=4, prefill_chunk_tokens=16))
    assert_same_outputs(engine.generate(requests), expected)
    stats = engine.stats
    assert stats.preemptions > 0
    assert stats.num_blocks == 16 and stats.peak_blocks <= 16
    assert stats.kv_cache_bytes <= budget


def test_request_larger_than_the_pool_is_refused_up_front(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=4 * PagedKVCache.bytes_per_block(model.config, 4),
                                                   kv_block_size=4))
    with pytest.raises(KVCacheTooSmallError, match="needs 20 tokens"):
        engine.submit(GenerationRequest(tuple(range(3, 13)), SamplingParams(max_tokens=10)))


def test_shared_prefix_is_served_from_cache(tiny):
    model, tokenizer = tiny
    prefix = tuple(range(10, 74))  # 64 tokens = 4 blocks of 16
    requests = random_requests(seed=2, num=6, vocab_size=model.config.vocab_size, max_prompt=10, shared_prefix=prefix)
    expected = reference(model, tokenizer, requests)
    on = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefill_chunk_tokens=80))
    assert_same_outputs(on.generate(requests), expected)
    # The first request computes the prefix; it is cached after that step, so the others reuse it.
    assert on.stats.num_cached_prompt_tokens == 64 * 5
    assert on.stats.num_computed_prompt_tokens + on.stats.num_cached_prompt_tokens == on.stats.num_prompt_tokens
    off = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefill_chunk_tokens=80, prefix_cache=False))
    assert_same_outputs(off.generate(requests), expected)
    assert off.stats.num_cached_prompt_tokens == 0


def test_fully_cached_prompt_copies_its_last_block_before_writing(tiny):
    model, tokenizer = tiny
    request = GenerationRequest(tuple(range(5, 37)), SamplingParams(max_tokens=6, ignore_eos=True))  # 2 full blocks
    expected = reference(model, tokenizer, [request])
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20))
    assert_same_outputs(engine.generate([request]), expected)
    again = engine.generate([request])
    assert_same_outputs(again, expected)
    assert again[0].num_cached_prompt_tokens == 31  # the last prompt token is recomputed for its logits
    assert engine.stats.num_block_copies == 1  # ... into a copy: the cached block stays intact
    assert_same_outputs(engine.generate([request]), expected)


def test_streaming_events_spell_the_result(tiny):
    model, tokenizer = tiny
    requests = random_requests(seed=3, num=3, vocab_size=model.config.vocab_size)
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefill_chunk_tokens=8))
    events = {r.request_id: [] for r in requests}
    handles = [engine.submit(r, on_token=lambda e: events[e.request_id].append(e)) for r in requests]
    while engine.has_unfinished:
        engine.step()
    for h in handles:
        got = events[h.request_id]
        assert [e.token_id for e in got] == h.result().output_token_ids
        assert "".join(e.text for e in got) == h.result().text
        assert [e.finish_reason for e in got] == [None] * (len(got) - 1) + ["length"]


def test_stop_strings_and_eos_match_reference(tiny):
    model, tokenizer = tiny
    base = random_requests(seed=4, num=6, vocab_size=model.config.vocab_size, max_new=30)
    free_run = reference(model, tokenizer, base)
    requests = []
    for r, out in zip(base, free_run):  # stop at a piece of text the request will really produce
        stop = (out.text[len(out.text) // 2 : len(out.text) // 2 + 2],) if len(out.text) > 4 else ()
        requests.append(GenerationRequest(r.prompt_token_ids, SamplingParams(max_tokens=30, stop=stop), request_id=r.request_id))
    expected = reference(model, tokenizer, requests)
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefill_chunk_tokens=16))
    assert_same_outputs(engine.generate(requests), expected)
    assert any(e.finish_reason == "stop" for e in expected)


def test_seeded_sampling_matches_reference(tiny):
    model, tokenizer = tiny
    requests = [GenerationRequest(r.prompt_token_ids, SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, top_k=20,
                                                                     seed=i, ignore_eos=True), request_id=r.request_id)
                for i, r in enumerate(random_requests(seed=5, num=5, vocab_size=model.config.vocab_size))]
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefill_chunk_tokens=12))
    assert_same_outputs(engine.generate(requests), reference(model, tokenizer, requests))


def test_cancel_frees_blocks(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, kv_block_size=4, prefix_cache=False))
    keep, drop = random_requests(seed=6, num=2, vocab_size=model.config.vocab_size, max_new=12)
    h_keep, h_drop = engine.submit(keep), engine.submit(drop)
    engine.step()
    assert engine.kv.pool.num_used > 0
    assert engine.cancel(drop.request_id) and not engine.cancel("no-such-request")
    assert h_drop.result().finish_reason == "cancelled"
    assert engine.kv.pool.num_used == len(engine.scheduler.running[0].block_table)
    while engine.has_unfinished:
        engine.step()
    assert engine.kv.pool.num_used == 0
    assert h_keep.result().output_token_ids == generate(model, tokenizer, keep).output_token_ids


def finishing_order(engine, requests) -> list[str]:
    """Request ids in the order their requests finished, all submitted at once."""
    handles = [engine.submit(r) for r in requests]
    order = []
    while engine.has_unfinished:
        engine.step()
        order += [h.request_id for h in handles if h.finished and h.request_id not in order]
    return order


def test_priority_and_shortest_predicted_first_order(tiny):
    model, tokenizer = tiny
    long_req = GenerationRequest((5, 6, 7), SamplingParams(max_tokens=8, ignore_eos=True), request_id="long")
    short_req = GenerationRequest((8, 9), SamplingParams(max_tokens=2, ignore_eos=True), request_id="short")
    urgent = GenerationRequest((10, 11), SamplingParams(max_tokens=8, ignore_eos=True), priority=-5, request_id="urgent")

    def finish_order(config, requests):
        return finishing_order(Engine(model, tokenizer, config), requests)

    one_at_a_time = dict(kv_cache_memory=8 << 20, max_batch_size=1)
    assert finish_order(EngineConfig(**one_at_a_time), [long_req, short_req]) == ["long", "short"]
    assert finish_order(EngineConfig(**one_at_a_time, scheduling="spf"), [long_req, short_req]) == ["short", "long"]
    assert finish_order(EngineConfig(**one_at_a_time), [long_req, short_req, urgent])[0] == "urgent"


def reference_logprobs(model, prompt, continuation):
    ids = list(prompt) + list(continuation)
    cache = ContiguousKVCache(model.config, len(ids))
    with torch.inference_mode():
        hidden = model.forward(torch.tensor(ids), torch.arange(len(ids)), cache)  # [S, H]
        logprobs = torch.log_softmax(model.compute_logits(hidden), dim=-1)  # [S, V]
    return [float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation)]


def test_score_requests_match_reference_logprobs_and_share_the_prompt(tiny):
    model, tokenizer = tiny
    prompt = tuple(range(20, 60))  # 40 tokens: 2 full blocks of 16 shared by every label
    labels = [(101,), (102, 103), (104, 105, 106)]
    requests = [ScoreRequest(prompt, label, request_id=f"label{i}") for i, label in enumerate(labels)]
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefill_chunk_tokens=16))
    first = engine.generate(requests[:1])  # warms the cache with the prompt
    results = first + engine.generate(requests[1:])
    for result, label in zip(results, labels):
        assert result.finish_reason == "scored"
        assert result.token_logprobs == pytest.approx(reference_logprobs(model, prompt, label), abs=1e-4)
        assert math.isclose(result.logprob, sum(result.token_logprobs))
    assert [r.num_cached_prompt_tokens for r in results] == [0, 32, 32]


def test_zero_max_tokens_finishes_without_running(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=1 << 20))
    result = engine.generate([GenerationRequest((3, 4), SamplingParams(max_tokens=0))])[0]
    assert (result.output_token_ids, result.finish_reason) == ([], "length")
    assert engine.stats.num_steps == 0


def test_engine_config_is_validated():
    with pytest.raises(ValueError, match="kv_block_size"):
        EngineConfig(kv_block_size=0)
    with pytest.raises(ValueError, match="scheduling"):
        EngineConfig(scheduling="lifo")
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        EngineConfig(prefill_chunk_tokens=0)
    with pytest.raises(ValueError, match="weight_format must be one of fp32, bf16, native, got 'int3'"):
        EngineConfig(weight_format="int3")
    with pytest.raises(ValueError, match="threads"):
        EngineConfig(threads=0)
    with pytest.raises(TypeError):
        EngineConfig(8 << 20)  # keywords only: the knobs are named as the SQL settings are


def test_smollm2_batched_greedy_equals_reference(smollm2, smollm2_fp32):
    tokenizer = smollm2.tokenizer
    prompts = ["What is the capital of France?", "Write a haiku about the sea.", "Name three colors."]
    requests = [GenerationRequest(tuple(tokenizer.encode_chat(p)), SamplingParams(max_tokens=8), request_id=p)
                for p in prompts]
    engine = Engine(smollm2_fp32, tokenizer, EngineConfig(kv_cache_memory=64 << 20, prefill_chunk_tokens=48))
    assert_same_outputs(engine.generate(requests), reference(smollm2_fp32, tokenizer, requests))
    assert engine.stats.num_cached_prompt_tokens > 0  # the chat template's system prompt is shared


def test_a_bad_request_in_a_batch_leaves_nothing_queued(tiny):
    from runtime.errors import PromptTooLongError

    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20))
    good = GenerationRequest((3, 4, 5), SamplingParams(max_tokens=4))
    too_long = GenerationRequest(tuple(range(3, 3 + model.config.max_position_embeddings)), SamplingParams(max_tokens=4))
    with pytest.raises(PromptTooLongError):
        engine.generate([good, too_long])
    assert not engine.has_unfinished and engine.kv.pool.num_used == 0


def test_ignore_eos_masks_eos_like_the_reference(tiny):
    """Prompts whose greedy continuation hits EOS run on to max_tokens, never emitting EOS."""
    model, tokenizer = tiny
    candidates = random_requests(seed=7, num=200, vocab_size=model.config.vocab_size, max_prompt=8, max_new=16)
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20))
    eos_hitting = [replace(r, sampling=replace(r.sampling, ignore_eos=False, max_tokens=16))
                   for r in candidates]
    stopped = [r for r, out in zip(candidates, engine.generate(eos_hitting)) if out.finish_reason == "stop"]
    assert stopped, "the tiny model should reach EOS on some random prompts"
    requests = [replace(r, sampling=replace(r.sampling, max_tokens=16)) for r in stopped[:6]]
    results = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20)).generate(requests)
    assert_same_outputs(results, reference(model, tokenizer, requests))
    for r in results:
        assert len(r.output_token_ids) == 16 and not set(r.output_token_ids) & tokenizer.eos_token_ids


def test_spf_with_the_learned_predictor_runs_the_requests_like_short_earlier_ones_first(tiny):
    """Same max_tokens for all: only the history (the length predictor) tells the long ones from the short."""
    from planner.length_predictor import LengthPredictor

    model, tokenizer = tiny
    predictor = LengthPredictor()
    for i in range(4):
        predictor.record((5, 6, 7, 8, 9, 10 + i), 8)  # "long" prompts
        predictor.record((40, 41, 42, 43, 44, 50 + i), 1)  # "short" prompts
    requests = [GenerationRequest((5, 6, 7, 8, 9, 20 + i), SamplingParams(max_tokens=8, ignore_eos=True),
                                  request_id=f"long{i}") for i in range(2)] + [
        GenerationRequest((40, 41, 42, 43, 44, 60 + i), SamplingParams(max_tokens=8, ignore_eos=True),
                          request_id=f"short{i}") for i in range(2)]

    def start_order(scheduling):
        engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, max_batch_size=1,
                                                       scheduling=scheduling),
                        predictor.expected_tokens)
        return finishing_order(engine, requests)

    assert start_order("fcfs") == ["long0", "long1", "short0", "short1"]
    assert start_order("spf") == ["short0", "short1", "long0", "long1"]


def test_a_failed_generate_leaves_nothing_behind_for_the_next_one(tiny, mixed):
    model, tokenizer = tiny
    requests, expected = mixed
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefix_cache=False))
    run, steps = engine.runner.run, []

    def fails_on_the_third_step(batch):
        steps.append(batch)
        if len(steps) == 3:
            raise RuntimeError("a kernel failed")
        return run(batch)

    engine.runner.run = fails_on_the_third_step
    with pytest.raises(RuntimeError, match="a kernel failed"):
        engine.generate(requests[:4])
    assert not engine.has_unfinished and engine.kv.pool.num_used == 0
    engine.runner.run = run
    assert_same_outputs(engine.generate(requests), expected)
