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
