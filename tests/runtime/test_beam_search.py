"""Beam search over the engine (tiny random model): at least as likely as greedy, prompts' KV shared."""
from __future__ import annotations

import pytest

from operators.engine_config import EngineConfig
from operators.requests import GenerationRequest, SamplingParams
from runtime.beam_search import beam_search
from runtime.engine import Engine

PROMPTS = [(5, 6, 7), (9, 10, 11, 12), (20, 21), (30, 31, 32, 33, 34), (40, 41, 42), (50, 51, 52, 53)]


@pytest.fixture
def engine(tiny):
    model, tokenizer = tiny
    return Engine(model, tokenizer, EngineConfig(kv_cache_memory=32 << 20, kv_block_size=4))


def test_beams_are_at_least_as_likely_as_greedy(engine):
    tokens = 6
    greedy = engine.generate([GenerationRequest(p, SamplingParams(max_tokens=tokens, logprobs=0, ignore_eos=True))
                              for p in PROMPTS])
    greedy_logprob = [sum(lp.logprob for lp in r.logprobs) for r in greedy]
    eos = frozenset()  # the same length as greedy's: sums compare like for like
    found = beam_search(engine.generate, PROMPTS, width=4, max_tokens=tokens, eos_ids=eos, length_penalty=0.0)
    better_or_equal = sum(beams[0].logprob >= g - 1e-4 for beams, g in zip(found, greedy_logprob))
    assert better_or_equal >= 5
    assert all(len(beams) == 4 and len(beams[0].tokens) == tokens for beams in found)
    assert all(beams[0].logprob >= beams[-1].logprob for beams in found)


def test_beams_share_their_prompts_kv_through_the_prefix_cache(engine):
    prompt = tuple(range(60, 100))  # 40 tokens: 10 full blocks of 4
    before = engine.stats.num_computed_prompt_tokens
    beam_search(engine.generate, [prompt], width=3, max_tokens=5, eos_ids=frozenset())
    computed = engine.stats.num_computed_prompt_tokens - before
    asked = sum(len(prompt) + t for t in range(5)) * 3  # what 5 steps of 3 beams would compute without sharing
    assert computed < asked / 4


def test_one_beam_is_greedy(engine):
    [greedy] = engine.generate([GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=5, ignore_eos=True))])
    [[beam]] = beam_search(engine.generate, [PROMPTS[0]], width=1, max_tokens=5, eos_ids=frozenset())
    assert beam.tokens == tuple(greedy.output_token_ids)


def test_a_cancelled_search_stops_at_its_next_step(engine):
    steps = []

    def run(requests):
        steps.append(len(requests))
        return engine.generate(requests)

    prompt = tuple(range(3, 10))
    beam_search(run, [prompt], width=2, max_tokens=8, eos_ids=frozenset(), cancelled=lambda: len(steps) >= 2)
    assert len(steps) == 2
