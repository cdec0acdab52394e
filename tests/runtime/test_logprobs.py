"""Log-probabilities come out of the engine's own step: the model's log_softmax of its raw logits."""
from __future__ import annotations

import pytest
import torch

from operators.llama import ContiguousKVCache
from runtime.engine import Engine
from operators.engine_config import EngineConfig
from runtime.generate import generate
from runtime.model_runner import PagedKVCache
from operators.requests import GenerationRequest, SamplingParams


def forward_logprobs(model, prompt, output) -> torch.Tensor:
    """[len(output), V]: every output position's distribution from one plain forward over prompt + output."""
    ids = list(prompt) + list(output)
    with torch.inference_mode():
        hidden = model.forward(torch.tensor(ids), torch.arange(len(ids)), ContiguousKVCache(model.config, len(ids)))
        return torch.log_softmax(model.compute_logits(hidden[len(prompt) - 1:-1]).float(), dim=-1)


def requests() -> list[GenerationRequest]:
    """Greedy requests asking for 0, 3 and no alternatives, and a sampled one: batched together."""
    prompts = [tuple(range(5, 30)), tuple(range(40, 47)), tuple(range(3, 40)), tuple(range(70, 90))]
    params = [SamplingParams(max_tokens=9, ignore_eos=True, logprobs=0),
              SamplingParams(max_tokens=6, ignore_eos=True, logprobs=3),
              SamplingParams(max_tokens=7, ignore_eos=True),
              SamplingParams(max_tokens=8, ignore_eos=True, temperature=1.3, top_k=5, seed=3, logprobs=2)]
    return [GenerationRequest(p, s, request_id=f"r{i}") for i, (p, s) in enumerate(zip(prompts, params))]


@pytest.mark.parametrize("block_size, chunk, blocks", [(16, 512, None), (4, 16, 16)])  # the second one preempts
def test_engine_logprobs_equal_the_reference_loop_and_a_plain_forward(tiny, block_size, chunk, blocks):
    model, tokenizer = tiny
    memory = blocks * PagedKVCache.bytes_per_block(model.config, block_size) if blocks else 8 << 20
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=memory, kv_block_size=block_size,
                                                   prefill_chunk_tokens=chunk))
    batch = requests()
    results = engine.generate(batch)
    if blocks:
        assert engine.stats.preemptions > 0
    for request, got in zip(batch, results):
        want = generate(model, tokenizer, request)
        assert got.output_token_ids == want.output_token_ids
        k = request.sampling.logprobs
        if k is None:
            assert got.logprobs is None
            continue
        assert [lp.token_id for lp in got.logprobs] == got.output_token_ids
        expected = forward_logprobs(model, request.prompt_token_ids, got.output_token_ids)  # [out, V]
        for i, lp in enumerate(got.logprobs):
            assert lp.logprob == pytest.approx(float(expected[i, lp.token_id]), abs=1e-4)
            assert lp.logprob == pytest.approx(want.logprobs[i].logprob, abs=1e-4)
            assert len(lp.top) == k
            values, ids = torch.topk(expected[i], k) if k else (torch.empty(0), torch.empty(0, dtype=torch.long))
            assert [t for t, _ in lp.top] == ids.tolist()
            assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_greedy_tokens_are_the_top_alternative(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20))
    request = GenerationRequest(tuple(range(5, 30)), SamplingParams(max_tokens=5, logprobs=1, ignore_eos=True))
    (result,) = engine.generate([request])
    assert all(lp.top[0] == (lp.token_id, lp.logprob) for lp in result.logprobs)


def test_streamed_events_carry_the_same_logprobs(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20))
    events = []
    handle = engine.submit(GenerationRequest(tuple(range(5, 30)), SamplingParams(max_tokens=6, logprobs=2)),
                           on_token=events.append)
    while not handle.finished:
        engine.step()
    assert [e.logprobs for e in events] == handle.result().logprobs


def test_negative_logprobs_are_refused():
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=-1)
