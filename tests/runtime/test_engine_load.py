"""engine.load: how busy the engine is right now, what a server's /metrics reports."""
from __future__ import annotations

from runtime.engine import Engine, EngineLoad
from operators.engine_config import EngineConfig
from operators.requests import GenerationRequest, SamplingParams


def test_load_follows_requests_through_the_engine(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=8 << 20, kv_block_size=4, max_batch_size=1))
    total = engine.load.kv_blocks_total
    assert engine.load == EngineLoad(num_running=0, num_waiting=0, kv_blocks_used=0, kv_blocks_cached=0,
                                     kv_blocks_total=total)

    params = SamplingParams(max_tokens=3, ignore_eos=True)
    first = engine.submit(GenerationRequest(tuple(range(5, 15)), params))
    engine.submit(GenerationRequest(tuple(range(20, 30)), params))
    assert (engine.load.num_running, engine.load.num_waiting) == (0, 2)
    engine.step()
    load = engine.load
    assert (load.num_running, load.num_waiting) == (1, 1)  # max_batch_size 1: the second one waits
    assert load.kv_blocks_active == 3  # 10 prompt tokens + 1 generated in blocks of 4

    engine.cancel(first.request_id)
    while engine.has_unfinished:
        engine.step()
    load = engine.load
    assert (load.num_running, load.num_waiting, load.kv_blocks_active) == (0, 0, 0)
    assert load.kv_blocks_used == load.kv_blocks_cached > 0  # what is left is the prefix cache's, evictable
