"""KV blocks beyond the pool: evicted blocks come back from the host tier, prompt blocks from the disk tier in a
later process, and a corrupt or foreign entry is never used."""
from __future__ import annotations

import random

import pytest

from operators.engine_config import EngineConfig
from operators.requests import GenerationRequest, SamplingParams
from runtime.engine import Engine
from runtime.generate import generate
from runtime.kv_tiers import KVTierSpec, cache_namespaces
from runtime.model_runner import PagedKVCache

DOCUMENT = tuple(random.Random(7).randrange(3, 250) for _ in range(120))  # 7 full blocks of 16


def question(i: int, max_tokens: int = 6) -> GenerationRequest:
    return GenerationRequest(DOCUMENT + (10 + i, 20 + i, 30 + i), SamplingParams(max_tokens=max_tokens, ignore_eos=True))


@pytest.fixture
def spec(tmp_path, tiny_llama):
    return KVTierSpec(tmp_path / "home", "tiny", str(tiny_llama.hf_dir))


def engine(tiny, spec, **config) -> Engine:
    model, tokenizer = tiny
    return Engine(model, tokenizer, EngineConfig(**{"kv_cache_memory": 8 << 20, **config}), kv_tiers=spec)


def test_a_new_engine_finds_the_documents_blocks_on_disk(tiny, spec):
    model, tokenizer = tiny
    first = engine(tiny, spec)
    first.generate([question(0)])
    first.tiers.flush()
    later = engine(tiny, spec)  # a new process: an empty pool, the same catalog
    (result,) = later.generate([question(1)])
    assert result.output_token_ids == generate(model, tokenizer, question(1)).output_token_ids
    assert result.cache_tier_hits == {"memory": 0, "disk": 112}  # the document's 7 full blocks
    assert result.num_cached_prompt_tokens == 112
    (shown,) = cache_namespaces(spec.home)
    assert shown["model"] == "tiny" and shown["entries"] == 7 and shown["block_size"] == 16


@pytest.mark.parametrize("damage", ["flip", "truncate", "version"])
def test_a_corrupt_entry_is_detected_and_never_used(tiny, spec, damage):
    model, tokenizer = tiny
    first = engine(tiny, spec)
    first.generate([question(0)])
    first.tiers.flush()
    victim = sorted((spec.home / "kv").rglob("*.kv"))[3]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF  # one flipped byte of K/V: the checksum no longer matches
    elif damage == "truncate":
        data = data[:100]
    else:
        data[4] = 99  # another format version
    victim.write_bytes(bytes(data))
    later = engine(tiny, spec)
    (result,) = later.generate([question(1)])
    assert result.output_token_ids == generate(model, tokenizer, question(1)).output_token_ids
    assert result.cache_tier_hits["disk"] < 112  # the chain stops at the bad block
    later.tiers.flush()
    assert victim.read_bytes() != bytes(data)  # dropped, then written whole again by the new computation


def test_another_block_size_or_dtype_never_reads_these_blocks(tiny, spec):
    first = engine(tiny, spec)
    first.generate([question(0)])
    first.tiers.flush()
    for config in ({"kv_block_size": 8}, {"kv_cache_dtype": "bf16"}):
        (result,) = engine(tiny, spec, **config).generate([question(1)])
        assert result.cache_tier_hits.get("disk", 0) == 0
    assert len(cache_namespaces(spec.home)) == 3


def test_evicted_blocks_come_back_from_the_host_tier(tiny, tmp_path, tiny_llama):
    model, tokenizer = tiny
    spec = KVTierSpec(tmp_path / "home", "tiny", str(tiny_llama.hf_dir), disk_bytes=0)
    budget = 12 * PagedKVCache.bytes_per_block(model.config, 16)  # the document (8 blocks) and little more
    small = Engine(model, tokenizer, EngineConfig(kv_cache_memory=budget), kv_tiers=spec)
    small.generate([question(0)])
    other = GenerationRequest(tuple(random.Random(8).randrange(3, 250) for _ in range(150)), SamplingParams(max_tokens=2))
    small.generate([other])  # needs the pool: the document's blocks are evicted to the host tier
    small.tiers.flush()
    (result,) = small.generate([question(1)])
    assert result.output_token_ids == generate(model, tokenizer, question(1)).output_token_ids
    assert result.cache_tier_hits.get("host", 0) > 0


def test_admission_restores_what_the_read_ahead_fetched(tiny, spec):
    """Reads start when a request is submitted and overlap the engine's steps: here they finish, then the files
    vanish, and admission still restores every block from the bytes already read."""
    model, tokenizer = tiny
    first = engine(tiny, spec)
    first.generate([question(0)])
    first.tiers.flush()
    later = engine(tiny, spec)
    handle = later.submit(question(1))
    for _, read in list(later.tiers._prefetched.values()):
        read.result()
    assert len(later.tiers._prefetched) == 7
    for entry in (spec.home / "kv").rglob("*.kv"):
        entry.unlink()
    while later.has_unfinished:
        later.step()
    assert handle.result().cache_tier_hits == {"memory": 0, "disk": 112}
    assert handle.result().output_token_ids == generate(model, tokenizer, question(1)).output_token_ids


def test_tiers_the_plan_leaves_out_are_neither_filled_nor_read(tiny, spec):
    engine(tiny, spec, kv_restore="none").generate([question(0)])
    assert not list((spec.home / "kv").rglob("*.kv"))  # nothing written through
    first = engine(tiny, spec)
    first.generate([question(0)])
    first.tiers.flush()
    (result,) = engine(tiny, spec, kv_restore="host").generate([question(1)])
    assert result.cache_tier_hits.get("disk", 0) == 0  # on disk, but disk is not a tier this plan loads from


def test_preemption_swaps_through_the_host_tier_instead_of_recomputing(tiny, tmp_path, tiny_llama):
    """With the host tier a preempted sequence's full blocks come back from RAM; without it they are recomputed."""
    model, tokenizer = tiny
    prompts = [tuple(random.Random(i).randrange(3, 250) for _ in range(40)) for i in range(6)]
    requests = [GenerationRequest(p, SamplingParams(max_tokens=24, ignore_eos=True)) for p in prompts]
    expected = [generate(model, tokenizer, r).output_token_ids for r in requests]
    budget = 20 * PagedKVCache.bytes_per_block(model.config, 4)
    recomputed = {}
    for kv_restore in ("host", "none"):
        spec = KVTierSpec(tmp_path / kv_restore, "tiny", str(tiny_llama.hf_dir), disk_bytes=0)
        small = Engine(model, tokenizer, EngineConfig(kv_cache_memory=budget, kv_block_size=4, prefill_chunk_tokens=16,
                                                      kv_restore=kv_restore), kv_tiers=spec)
        assert [r.output_token_ids for r in small.generate(requests)] == expected
        assert small.stats.preemptions > 0
        recomputed[kv_restore] = small.stats.num_recomputed_tokens
    assert recomputed["host"] < recomputed["none"]


def test_a_prompts_kv_handed_to_another_engine_is_adopted_not_recomputed(tiny):
    """Prefill/decode disaggregation's handoff: one engine computes the prompt, another adopts its whole blocks
    and computes only the rest, with the same greedy output as computing it all."""
    model, tokenizer = tiny
    prefill, decode = engine(tiny, None), engine(tiny, None)
    prefill.generate([GenerationRequest(DOCUMENT, SamplingParams(max_tokens=1))])
    blocks = prefill.export_prefix(DOCUMENT)
    assert len(blocks) == len(DOCUMENT) // 16
    assert decode.adopt_prefix(DOCUMENT, blocks) == len(blocks) * 16
    (result,) = decode.generate([question(0)])
    assert result.num_cached_prompt_tokens == len(blocks) * 16
    assert result.output_token_ids == generate(model, tokenizer, question(0)).output_token_ids
    assert decode.adopt_prefix(DOCUMENT, blocks) == len(blocks) * 16  # cached already: nothing changes
    with pytest.raises(ValueError, match="layout"):
        engine(tiny, None, kv_cache_dtype="int8").adopt_prefix(DOCUMENT, blocks)
