"""Speculative decoding: prompt lookup proposes, one multi-token step verifies, the output is unchanged."""
from __future__ import annotations

import random

import pytest
import torch

from operators.engine_config import EngineConfig
from operators.requests import GenerationRequest, SamplingParams
from runtime.engine import Engine
from runtime.generate import generate
from runtime.model_runner import PagedKVCache
from runtime.acceptance import WINDOW_DRAFTS
from runtime.speculation import PromptLookup, verify


@pytest.mark.parametrize("tokens, k, drafts", [
    ([1, 2, 3, 4, 5, 1, 2, 3], 3, [4, 5, 1]),  # the 3-gram 1 2 3 occurred before: its followers
    ([1, 2, 3, 4, 5, 1, 2, 3], 1, [4]),
    ([7, 8, 9, 7, 8, 6, 7, 8], 2, [6, 7]),  # the latest occurrence wins
    ([1, 2, 3, 4], 3, []),  # no repeated suffix
    ([5, 5, 5, 5], 4, [5]),  # the follower of the latest earlier 3-gram ends the sequence
    ([1, 2, 9, 1, 2], 5, [9, 1, 2]),  # fewer than k followers
])
def test_prompt_lookup_proposes_what_followed_the_suffix(tokens, k, drafts):
    assert PromptLookup().propose(0, tokens, k) == drafts


def test_prompt_lookup_index_grows_with_the_sequence():
    lookup, tokens = PromptLookup(), [1, 2, 3, 4]
    assert lookup.propose(0, tokens, 3) == []
    tokens += [1, 2]
    assert lookup.propose(0, tokens, 3) == [3, 4, 1]
    lookup.forget(0)
    assert lookup.propose(0, [4, 5, 4], 2) == []  # a forgotten sequence starts over


def test_greedy_verify_keeps_the_matching_prefix_and_the_targets_correction():
    vocab, targets = 10, [3, 4, 7, 1]
    rows = torch.nn.functional.one_hot(torch.tensor(targets), vocab).float()  # [4, V]: argmax = targets
    params = SamplingParams(max_tokens=8)
    assert verify(rows, [3, 4, 5], params, None) == [3, 4, 7]  # two accepted, the third corrected
    assert verify(rows, [3, 4, 7], params, None) == [3, 4, 7, 1]  # all accepted, plus a bonus token
    assert verify(rows, [9, 4, 7], params, None) == [3]


def test_sampled_verify_keeps_the_target_distribution():
    """The rejection rule: whatever the draft, the first emitted token is distributed as the target's p."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    p = torch.softmax(logits, 0)
    params = SamplingParams(max_tokens=8, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    rows = logits.repeat(3, 1)  # [3, V]
    n = 20000
    for draft in (0, 3):
        counts = torch.zeros(5)
        for _ in range(n):
            counts[verify(rows, [draft, draft], params, g)[0]] += 1
        assert torch.allclose(counts / n, p, atol=0.012), (draft, counts / n, p)


def repetitive_requests(vocab_size: int, num: int, seed: int, max_new: int = 24) -> list[GenerationRequest]:
    """Prompts that repeat a phrase, so that prompt lookup finds drafts (a random model often loops too)."""
    rng = random.Random(seed)
    out = []
    for i in range(num):
        phrase = [rng.randrange(3, vocab_size) for _ in range(rng.randint(2, 6))]
        prompt = tuple(phrase * rng.randint(2, 5) + [rng.randrange(3, vocab_size) for _ in range(rng.randint(0, 4))])
        out.append(GenerationRequest(prompt, SamplingParams(max_tokens=rng.randint(4, max_new), ignore_eos=True),
                                     request_id=f"r{i}"))
    return out


@pytest.fixture(scope="module")
def repetitive(tiny):
    model, tokenizer = tiny
    requests = repetitive_requests(model.config.vocab_size, 10, seed=5)
    return requests, [generate(model, tokenizer, r) for r in requests]


class OracleDrafts:
    """Proposes the reference continuation, with every `wrong_every`-th draft corrupted: acceptance of every
    length, from none to all, on a random model that never repeats itself."""

    proposes_free = False  # a stopped sequence proposes nothing (as with a draft model)

    def __init__(self, expected, wrong_every: int = 3):
        self.continuations = {tuple(r.prompt_token_ids): list(r.output_token_ids) for r in expected}
        self.wrong_every, self.calls = wrong_every, 0

    def propose(self, seq_id, tokens, k):
        for prompt, output in self.continuations.items():
            if tuple(tokens[: len(prompt)]) == prompt:
                done = len(tokens) - len(prompt)
                drafts = output[done : done + k]
                self.calls += 1
                if drafts and self.calls % self.wrong_every == 0:
                    drafts[self.calls % len(drafts)] = (drafts[self.calls % len(drafts)] + 1) % 50 + 3
                return drafts
        raise AssertionError("unknown sequence")

    def propose_all(self, wanted):
        return {seq_id: self.propose(seq_id, tokens, k) for seq_id, tokens, k in wanted}

    def forget(self, seq_id):
        pass


def speculative_engine(tiny, expected, wrong_every=3, **config):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, speculative="ngram", **config))
    engine.proposer = OracleDrafts(expected, wrong_every)
    return engine


@pytest.mark.parametrize("block_size, chunk, batch_cap, k, attention", [
    (16, 512, 64, 5, "torch"), (4, 7, 3, 3, "torch"), (1, 512, 1, 8, "torch"), (16, 9, 4, 2, "torch"),
    (16, 512, 64, 5, "tvm"), (4, 16, 2, 4, "tvm"),
])
def test_greedy_output_is_identical_whatever_the_drafts(tiny, repetitive, block_size, chunk, batch_cap, k, attention):
    requests, expected = repetitive
    engine = speculative_engine(tiny, expected, kv_block_size=block_size, prefill_chunk_tokens=chunk,
                                max_batch_size=batch_cap, num_speculative_tokens=k, attention_kernel=attention)
    for got, want in zip(engine.generate(requests), expected, strict=True):
        assert got.output_token_ids == want.output_token_ids, got.request_id
        assert got.text == want.text and got.finish_reason == want.finish_reason
    stats = engine.stats
    assert 0 < stats.num_accepted_draft_tokens < stats.num_draft_tokens
    assert stats.num_generated_tokens == sum(len(r.output_token_ids) for r in expected)
    assert stats.num_steps < stats.num_generated_tokens  # some steps emitted several tokens
    assert engine.kv.pool.num_used == engine.kv.prefix_cache.num_blocks  # only the tree keeps blocks


def test_prompt_lookup_on_a_model_runs_the_same_tokens(tiny, repetitive):
    model, tokenizer = tiny
    requests, expected = repetitive
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, speculative="ngram"))
    assert [r.output_token_ids for r in engine.generate(requests)] == [e.output_token_ids for e in expected]
    assert engine.stats.num_draft_tokens > 0  # the repeated phrases were looked up and verified


def test_speculation_under_preemption(tiny, repetitive):
    model, tokenizer = tiny
    requests, expected = repetitive
    block_bytes = PagedKVCache.bytes_per_block(model.config, 4)
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=14 * block_bytes, kv_block_size=4,
                                                   prefill_chunk_tokens=16, speculative="ngram"))
    engine.proposer = OracleDrafts(expected)
    for got, want in zip(engine.generate(requests), expected, strict=True):
        assert got.output_token_ids == want.output_token_ids, got.request_id
    assert engine.stats.preemptions > 0 and engine.stats.num_accepted_draft_tokens > 0


def test_blocks_cached_after_speculation_hold_only_verified_tokens(tiny, repetitive):
    """Prompts that extend the first round's outputs find them in the prefix cache: the cached K/V came from
    verified drafts and corrections, never from a rejected draft's slot."""
    model, tokenizer = tiny
    requests, expected = repetitive
    engine = speculative_engine(tiny, expected, kv_block_size=4)
    engine.generate(requests)
    follow_ups = [GenerationRequest(r.prompt_token_ids + tuple(e.output_token_ids), SamplingParams(max_tokens=4, ignore_eos=True))
                  for r, e in zip(requests, expected)]
    want = [generate(model, tokenizer, r).output_token_ids for r in follow_ups]
    engine.proposer = PromptLookup()
    got = engine.generate(follow_ups)
    assert [g.output_token_ids for g in got] == want
    assert sum(g.num_cached_prompt_tokens for g in got) > sum(len(r.prompt_token_ids) for r in requests)


def test_stop_strings_and_streamed_tokens_with_speculation(tiny, repetitive):
    model, tokenizer = tiny
    base, free_run = repetitive
    requests = []
    for r, out in zip(base, free_run):
        stop = (out.text[len(out.text) // 2 : len(out.text) // 2 + 2],) if len(out.text) > 4 else ()
        requests.append(GenerationRequest(r.prompt_token_ids, SamplingParams(max_tokens=r.sampling.max_tokens, stop=stop),
                                          request_id=r.request_id))
    expected = [generate(model, tokenizer, r) for r in requests]
    engine = speculative_engine(tiny, expected)
    events = {r.request_id: [] for r in requests}
    handles = [engine.submit(r, on_token=lambda e: events[e.request_id].append(e)) for r in requests]
    while engine.has_unfinished:
        engine.step()
    for h, want in zip(handles, expected):
        got = h.result()
        assert (got.output_token_ids, got.text, got.finish_reason) == (want.output_token_ids, want.text, want.finish_reason)
        assert [e.token_id for e in events[h.request_id]] == got.output_token_ids
    assert any(w.finish_reason == "stop" for w in expected)
    assert engine.stats.num_accepted_draft_tokens > 0


def test_penalized_requests_decode_one_token_at_a_time(tiny, repetitive):
    model, tokenizer = tiny
    requests = [GenerationRequest(r.prompt_token_ids, SamplingParams(max_tokens=8, ignore_eos=True,
                                                                     repetition_penalty=1.3)) for r in repetitive[0]]
    plain = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20)).generate(requests)
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, speculative="ngram"))
    assert [r.output_token_ids for r in engine.generate(requests)] == [r.output_token_ids for r in plain]
    assert engine.stats.num_draft_tokens == 0


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory):
    """Another random tiny Llama with the same tokenizer: a draft model that often disagrees."""
    from catalog.loader import load_model
    from operators.llama import build_model
    from tiny_llama import write_tiny_llama

    files = write_tiny_llama(tmp_path_factory.mktemp("other_tiny"), seed=1)
    return build_model(load_model(files.hf_dir), "fp32")


@pytest.mark.parametrize("same, attention", [(True, "torch"), (False, "torch"), (False, "tvm")])
def test_draft_model_output_is_identical(tiny, other_tiny, repetitive, same, attention):
    """The target as its own draft is accepted every time; another model's drafts often are not; the output is
    the reference's either way, through chunked prefill and the draft's own KV pool."""
    model, tokenizer = tiny
    requests, expected = repetitive
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, prefill_chunk_tokens=16,
                                                   speculative="draft", draft_model="d", num_speculative_tokens=4,
                                                   attention_kernel=attention),
                    draft_model=model if same else other_tiny)
    for got, want in zip(engine.generate(requests), expected, strict=True):
        assert got.output_token_ids == want.output_token_ids, got.request_id
    stats = engine.stats
    if same:
        assert stats.num_accepted_draft_tokens == stats.num_draft_tokens > 0
    else:
        assert 0 < stats.num_accepted_draft_tokens < stats.num_draft_tokens
    assert engine.proposer.kv.pool.num_used == 0  # finished sequences gave their draft blocks back


def test_a_draft_engine_needs_its_draft_model(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="draft model"):
        Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, speculative="draft", draft_model="d"))


def test_reconfigure_changes_scheduling_and_speculation_but_not_the_pool(tiny, repetitive):
    model, tokenizer = tiny
    requests, expected = repetitive
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, kv_block_size=4))
    engine.generate(requests[:2])
    cache = engine.runner.cache
    engine.reconfigure(EngineConfig(kv_cache_memory=8 << 20, kv_block_size=4, max_batch_size=2, speculative="ngram"))
    assert [r.output_token_ids for r in engine.generate(requests)] == [e.output_token_ids for e in expected]
    assert engine.runner.cache is cache and engine.stats.num_cached_prompt_tokens > 0
    with pytest.raises(ValueError, match="reconfigure changes only"):
        engine.reconfigure(EngineConfig(kv_cache_memory=4 << 20))


def test_a_sequence_whose_drafts_are_rejected_stops_drafting(tiny, repetitive):
    """Below the optimizer's break-even acceptance a sequence stops drafting after its probe (and, its proposals
    not being free, proposes no shadows that could bring it back); the output is the same either way."""
    requests, expected = repetitive
    drafted = {}
    for floor in (0.0, 0.9):
        engine = speculative_engine(tiny, expected, wrong_every=1, num_speculative_tokens=4,
                                    speculative_min_acceptance=floor)
        assert [r.output_token_ids for r in engine.generate(requests)] == [e.output_token_ids for e in expected]
        drafted[floor] = engine.stats.num_draft_tokens
    assert drafted[0.9] <= len(requests) * (WINDOW_DRAFTS + 3)  # each stopped once probed
    assert drafted[0.9] < drafted[0.0]


class PhasedDrafts:
    """Prompt lookup's shape of acceptance on a summary: each sequence's first `wrong_calls` proposals miss (the
    output has not started quoting), every later one is the reference continuation."""

    proposes_free = True

    def __init__(self, expected, wrong_calls: int):
        self.continuations = {tuple(r.prompt_token_ids): list(r.output_token_ids) for r in expected}
        self.wrong_calls, self.calls = wrong_calls, {}

    def propose_all(self, wanted):
        out = {}
        for seq_id, tokens, k in wanted:
            prompt = next(p for p in self.continuations if tuple(tokens[: len(p)]) == p)
            done = len(tokens) - len(prompt)
            drafts = self.continuations[prompt][done : done + k]
            self.calls[seq_id] = self.calls.get(seq_id, 0) + 1
            if drafts and self.calls[seq_id] <= self.wrong_calls:
                drafts[0] = (drafts[0] + 1) % 50 + 3
            out[seq_id] = drafts
        return out

    def forget(self, seq_id):
        pass


def test_a_sequence_that_stopped_drafting_drafts_again_once_its_output_starts_quoting(tiny):
    """Its first WINDOW_DRAFTS drafts all miss, so it stops verifying; its shadow proposals are scored against the
    tokens that follow and, once they match, it drafts again (accepted drafts prove it); the output is the same."""
    model, tokenizer = tiny
    rng = random.Random(11)
    requests = [GenerationRequest(tuple(rng.randrange(3, model.config.vocab_size) for _ in range(12)),
                                  SamplingParams(max_tokens=72, ignore_eos=True), request_id=f"q{i}") for i in range(2)]
    expected = [generate(model, tokenizer, r) for r in requests]
    k = 4
    for resumes in (True, False):
        engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, speculative="ngram",
                                                       num_speculative_tokens=k, speculative_min_acceptance=0.5))
        engine.proposer = PhasedDrafts(expected, wrong_calls=WINDOW_DRAFTS // k + 2)
        engine.proposer.proposes_free = resumes
        assert [r.output_token_ids for r in engine.generate(requests)] == [e.output_token_ids for e in expected]
        assert (engine.stats.num_accepted_draft_tokens > 0) == resumes
        assert engine.stats.num_draft_tokens >= len(requests) * WINDOW_DRAFTS
