"""The scheduler on its own (no model): budgets hold, memory holds, and every request completes correctly.

A fake model stands in for the forward pass: the next token is a hash of the whole
sequence so far, so a sequence preempted and recomputed must reproduce exactly the
tokens it would have produced without preemption.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.engine_config import EngineConfig
from runtime.kv_blocks import KVCacheManager
from operators.requests import GenerationRequest, SamplingParams
from runtime.scheduler import Scheduler
from runtime.sequence import Sequence

VOCAB = 7


def fake_next_token(tokens) -> int:
    return hash(tuple(tokens)) % VOCAB


def expected_output(prompt, max_new):
    tokens = list(prompt)
    for _ in range(max_new):
        tokens.append(fake_next_token(tokens))
    return tokens[len(prompt):]


def run(config: EngineConfig, num_blocks: int, requests, max_steps: int = 5000, arrivals=None):
    """arrivals[i]: the step at which request i is submitted (default: all before the first)."""
    kv = KVCacheManager(num_blocks, config.kv_block_size, config.prefix_cache)
    scheduler = Scheduler(config, kv)
    arrivals = arrivals or [0] * len(requests)
    seqs = {i: Sequence(i, f"r{i}", r, max_new_tokens=r.sampling.max_tokens, predicted_output_tokens=r.sampling.max_tokens)
            for i, r in enumerate(requests)}
    finished_order = []
    for step in range(max_steps):
        for i in range(len(requests)):
            if arrivals[i] == step:
                scheduler.add(seqs[i])
        if not scheduler.has_work:
            if step > max(arrivals):
                break
            continue
        batch = scheduler.schedule()
        assert batch.num_tokens <= config.prefill_chunk_tokens
        assert len(batch.rows) <= config.max_batch_size
        assert not batch.is_empty, "no progress with work pending"
        written = set()
        for row in batch.rows:
            seq = seqs[row.seq_id]
            assert list(row.token_ids) == seq.token_ids[row.start : row.context_len]
            for pos in range(row.start, row.context_len):
                slot = (row.block_table[pos // config.kv_block_size], pos % config.kv_block_size)
                assert slot not in written
                written.add(slot)
                assert kv.pool.refcounts[slot[0]] == 1, "a row writes into a shared block"
        assert kv.pool.num_used <= num_blocks
        scheduler.advance(batch, seqs)
        for row in batch.rows:
            seq = seqs[row.seq_id]
            if row.logit_offsets:
                seq.token_ids.append(fake_next_token(seq.token_ids))
                if len(seq.output_token_ids) == seq.max_new_tokens:
                    scheduler.finish(seq, "length")
                    finished_order.append(row.seq_id)
        check_refcounts(kv, scheduler)
    assert not scheduler.has_work, "did not finish"
    return seqs, scheduler, kv, finished_order


def check_refcounts(kv: KVCacheManager, scheduler: Scheduler):
    tree = kv.prefix_cache.all_blocks() if kv.prefix_cache else []
    for block in range(kv.pool.num_blocks):
        owners = sum(s.block_table.count(block) for s in scheduler.running) + tree.count(block)
        assert kv.pool.refcounts[block] == owners
    assert all(not s.block_table for s in scheduler.waiting)


prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=24)
workloads = st.lists(st.tuples(st.sampled_from([(), (1, 2, 3, 4, 5, 6)]), prompts, st.integers(1, 8), st.integers(0, 2),
                               st.integers(0, 12)),
                     min_size=1, max_size=10)


@settings(max_examples=80, deadline=None)
@given(workload=workloads, block_size=st.sampled_from([1, 2, 4, 16]), budget=st.integers(1, 40),
       batch_cap=st.integers(1, 8), prefix_cache=st.booleans(), policy=st.sampled_from(["fcfs", "spf"]),
       spare_blocks=st.integers(1, 12))
def test_every_request_completes_with_its_own_output_under_any_pressure(workload, block_size, budget, batch_cap,
                                                                        prefix_cache, policy, spare_blocks):
    requests = [GenerationRequest(tuple(prefix) + tuple(p), SamplingParams(max_tokens=n), priority=prio)
                for prefix, p, n, prio, _ in workload]
    largest = max(-(-(len(r.prompt_token_ids) + r.sampling.max_tokens) // block_size) for r in requests)
    num_blocks = largest + spare_blocks  # always enough for any one request, rarely for all at once
    config = EngineConfig(kv_block_size=block_size, prefill_chunk_tokens=budget, max_batch_size=batch_cap,
                          prefix_cache=prefix_cache, scheduling=policy)
    seqs, scheduler, kv, _ = run(config, num_blocks, requests, arrivals=[arrival for *_, arrival in workload])
    for i, r in enumerate(requests):
        assert seqs[i].output_token_ids == expected_output(r.prompt_token_ids, r.sampling.max_tokens)
    assert kv.pool.peak_used <= num_blocks
    held_by_tree = kv.prefix_cache.num_blocks if kv.prefix_cache else 0
    assert kv.pool.num_used == held_by_tree  # no leak
    if kv.prefix_cache:
        assert kv.prefix_cache.num_locked_blocks == 0


def test_a_tight_pool_preempts_the_latest_lowest_priority_request():
    requests = [GenerationRequest((1,) * 4, SamplingParams(max_tokens=12)),
                GenerationRequest((2,) * 4, SamplingParams(max_tokens=12), priority=-1),  # lower runs first (vLLM)
                GenerationRequest((3,) * 4, SamplingParams(max_tokens=12))]
    config = EngineConfig(kv_block_size=4, prefill_chunk_tokens=64, prefix_cache=False)
    seqs, scheduler, _, order = run(config, num_blocks=9, requests=requests)
    assert scheduler.num_preemptions > 0
    assert seqs[1].num_preemptions == 0  # the high-priority one is never the victim
    assert seqs[2].num_preemptions > 0  # the latest of the low-priority ones is
    assert order[0] == 1


def test_a_late_high_priority_request_preempts_a_lower_one_at_the_batch_cap():
    requests = [GenerationRequest((1,) * 4, SamplingParams(max_tokens=20)),
                GenerationRequest((2,) * 4, SamplingParams(max_tokens=20)),
                GenerationRequest((3,) * 4, SamplingParams(max_tokens=3), priority=-5)]
    config = EngineConfig(kv_block_size=4, prefill_chunk_tokens=64, max_batch_size=2, prefix_cache=False)
    seqs, scheduler, _, order = run(config, num_blocks=64, requests=requests, arrivals=[0, 0, 4])
    assert seqs[1].num_preemptions == 1 and seqs[0].num_preemptions == 0  # the later low-priority one yields
    assert order[0] == 2  # and the urgent request finishes first
    for i, r in enumerate(requests):
        assert seqs[i].output_token_ids == expected_output(r.prompt_token_ids, r.sampling.max_tokens)


def test_equal_priority_never_preempts_for_admission():
    requests = [GenerationRequest((1,) * 4, SamplingParams(max_tokens=10)),
                GenerationRequest((2,) * 4, SamplingParams(max_tokens=10))]
    config = EngineConfig(kv_block_size=4, prefill_chunk_tokens=64, max_batch_size=1, prefix_cache=False)
    _, scheduler, _, order = run(config, num_blocks=64, requests=requests, arrivals=[0, 2])
    assert scheduler.num_preemptions == 0 and order == [0, 1]


def test_decodes_and_prefill_chunks_share_the_token_budget():
    requests = [GenerationRequest((1, 2), SamplingParams(max_tokens=5)), GenerationRequest(tuple(range(7)) * 5, SamplingParams(max_tokens=1))]
    config = EngineConfig(kv_block_size=4, prefill_chunk_tokens=8, prefix_cache=False)
    kv = KVCacheManager(64, 4, False)
    scheduler = Scheduler(config, kv)
    seqs = {i: Sequence(i, str(i), r, max_new_tokens=r.sampling.max_tokens) for i, r in enumerate(requests)}
    scheduler.add(seqs[0])
    scheduler.advance(batch := scheduler.schedule(), seqs)
    seqs[0].token_ids.append(9)  # first token sampled; now decoding
    scheduler.add(seqs[1])
    batch = scheduler.schedule()
    assert [(r.seq_id, r.num_tokens) for r in batch.rows] == [(0, 1), (1, 7)]  # one decode + a 7-token chunk
    assert batch.rows[1].logit_offsets == ()  # a chunk that does not finish the prompt samples nothing


def test_shortest_predicted_first_runs_short_requests_first():
    config = EngineConfig(kv_block_size=4, max_batch_size=1, prefill_chunk_tokens=64, scheduling="spf")
    requests = [GenerationRequest((1, 2), SamplingParams(max_tokens=n, ignore_eos=True)) for n in (9, 2, 5, 1)]
    _, _, _, order = run(config, 64, requests)
    assert order == [3, 1, 2, 0]


@settings(max_examples=25, deadline=None)
@given(long_tokens=st.integers(5, 40), short_tokens=st.integers(1, 3), gap=st.integers(1, 3))
def test_aging_admits_a_long_request_however_many_short_ones_keep_arriving(long_tokens, short_tokens, gap):
    """A stream of short requests arriving faster than they finish would hold a long one back forever under plain
    shortest-first; aged, the long one starts within its own predicted length's worth of steps."""
    config = EngineConfig(kv_block_size=4, max_batch_size=1, prefill_chunk_tokens=64, scheduling="spf")
    shorts = 200
    requests = [GenerationRequest((1, 2), SamplingParams(max_tokens=long_tokens, ignore_eos=True))] + [
        GenerationRequest((3, 4), SamplingParams(max_tokens=short_tokens, ignore_eos=True)) for _ in range(shorts)]
    arrivals = [1] + [gap * i for i in range(shorts)]
    _, _, _, order = run(config, 256, requests, max_steps=20000, arrivals=arrivals)
    finished_before_long = order.index(0)
    # it waits at most ~long_tokens steps after arriving, in which fewer than that many short ones can finish
    assert finished_before_long <= long_tokens + 2
    assert finished_before_long < shorts // 2
