"""A decode step's attention is priced no faster than reading its context from memory: the kernel's measured
rate covers one layer's KV in cache, while a step over a long context streams every layer's."""
from __future__ import annotations

from dataclasses import replace

from operators.engine_config import EngineConfig
from planner.cost import LLMWorkload, kv_bytes_per_token, llm_cost
from planner.examples import EXAMPLE_TVM_HARDWARE, SMOLLM2_CONFIG, SMOLLM2_FACTS

KNOBS = EngineConfig(max_batch_size=8, prefill_chunk_tokens=512, kv_block_size=16, kv_cache_memory=1 << 30,
                     prefix_cache=True, scheduling="fcfs", weight_format="native", kernels="tvm",
                     attention_kernel="tvm")
# the TVM kernel's decode rate as measured on a 2-core Zen 4 (one layer of 16 x 256 tokens, in cache)
HW = replace(EXAMPLE_TVM_HARDWARE, attention_tvm_decode_flops=9e10, copy_bandwidth=2.25e10)


def decode_seconds(prompt_tokens: int, kv_cache_dtype: str = "fp32") -> float:
    one = LLMWorkload(requests=1, prompt_tokens=prompt_tokens, shared_tokens=0, static_prefix_tokens=0,
                      output_tokens=64)
    knobs = replace(KNOBS, kv_cache_dtype=kv_cache_dtype)
    return llm_cost(one, knobs, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, HW).decode_seconds


def test_each_token_of_context_costs_at_least_its_kv_reads():
    # 1,000 more tokens of context: each of 64 decode steps reads 1,000 more tokens of fp32 K and V in every layer
    # (the linears' cost is the same in both and cancels)
    more_reads = 64 * 1000 * kv_bytes_per_token(SMOLLM2_CONFIG, "fp32") / HW.copy_bandwidth
    assert decode_seconds(2000) - decode_seconds(1000) >= 0.95 * more_reads


def test_a_smaller_kv_format_reads_less_over_a_long_context():
    assert decode_seconds(2000, "bf16") < decode_seconds(2000, "fp32")
