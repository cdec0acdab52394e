"""The cost model: a roofline per engine step against the calibrated hardware profile.

A step's time is max(FLOPs / FLOP/s, bytes / bandwidth) plus the fixed cost of
launching its operators. Prefill runs in chunks of prefill_chunk_tokens; decode
runs up to max_batch_size sequences per step, each step reading every weight once.
Estimates come in, seconds and bytes go out; nothing here chooses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from catalog.hardware import HardwareProfile
from codegen.linear import DEFAULT_GEMV_MAX_TOKENS as GEMV_MAX_TOKENS
from operators.physical import EngineKnobs

OPS_PER_LAYER = 14  # torch ops one decoder layer launches (norms, matmuls, rope, attention, adds)
OPS_PER_STEP = 40  # embedding, final norm, logits, sampling, batch preparation
QUANT_DEQUANT_FLOPS_PER_WEIGHT = 4  # scale, offset, unpack: what the torch 'native' path does per weight per call


@dataclass(frozen=True)
class LLMWorkload:
    """One model-call operator's work as the engine will see it."""
    requests: float  # sequences sent to the engine (after dedup; classify: rows x labels)
    prompt_tokens: float  # mean prompt tokens per request
    shared_tokens: float  # mean prompt prefix a request can find in the prefix cache (before block rounding)
    static_prefix_tokens: float  # identical for every request (computed once with the cache on)
    output_tokens: float  # mean generated tokens per request
    scored_tokens: float = 0.0  # continuation tokens scored per request (classify)
    cache_footprint_tokens: float = 0.0  # KV tokens the cache must keep for arrival order to find the sharing


@dataclass(frozen=True)
class LLMCost:
    seconds: float
    prefill_seconds: float
    decode_seconds: float
    computed_prompt_tokens: float  # all requests, after the prefix cache
    kv_bytes: float  # peak KV pool use
    batch: float  # effective concurrent sequences


def _bytes_and_rate(knobs: EngineKnobs, weight_bytes: dict, params: float, hw: HardwareProfile) -> tuple[float, float, float]:
    """(bytes moved per forward pass, FLOP/s of its matmuls, extra FLOPs per pass) for a weight format."""
    if knobs.weight_format == "bf16":
        return weight_bytes["bf16"], hw.bf16_flops, 0.0
    if knobs.weight_format == "native" and knobs.kernels == "torch":
        # the torch path dequantizes every block to fp32 on every call: read blocks, write + read fp32
        return weight_bytes["native"] + 8 * params, hw.fp32_flops, QUANT_DEQUANT_FLOPS_PER_WEIGHT * params
    if knobs.weight_format == "native":
        return weight_bytes["native"], hw.fp32_flops, QUANT_DEQUANT_FLOPS_PER_WEIGHT * params
    return weight_bytes["fp32"], hw.fp32_flops, 0.0


def _tvm_native_matmul_seconds(tokens: float, params: float, weight_bytes: dict, hw: HardwareProfile) -> float:
    """Fused TVM dequant-GEMV at its measured rates up to GEMV_MAX_TOKENS rows; above that the
    linear dequantizes its blocks once per call into fp32 scratch and runs an fp32 GEMM."""
    if tokens <= 1:
        return params / hw.quant_gemv_rate_t1
    if tokens <= GEMV_MAX_TOKENS:
        return tokens * params / hw.quant_gemv_rate_t4
    dequantize = (weight_bytes["native"] + 8 * params) / hw.copy_bandwidth
    return dequantize + tokens * 2 * params / hw.fp32_flops


def computed_prompt_tokens(w: LLMWorkload, knobs: EngineKnobs) -> float:
    """Prompt tokens prefill must compute for all requests, after the prefix cache.

    The first request computes its whole prompt; each later one what it does not share.
    The cache matches whole blocks only, so half a block of every shared prefix is recomputed.
    """
    if not knobs.prefix_cache or w.requests <= 0:
        return w.requests * w.prompt_tokens
    shared = max(0.0, w.shared_tokens - knobs.kv_block_size / 2)
    return w.prompt_tokens + (w.requests - 1) * max(0.0, w.prompt_tokens - shared)


def llm_cost(w: LLMWorkload, knobs: EngineKnobs, config, weight_bytes: dict, hw: HardwareProfile,
             correction: tuple[float, float] = (1.0, 1.0)) -> LLMCost:
    """correction: learned (prefill, decode) factors of this machine (planner/calibration.py)."""
    kv_per_token = config.kv_bytes_per_token
    params = config.num_parameters + (config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0)
    flops_per_token = config.flops_per_token
    step_bytes, rate, extra_flops = _bytes_and_rate(knobs, weight_bytes, params, hw)
    overhead = hw.op_overhead_s * (OPS_PER_LAYER * config.num_layers + OPS_PER_STEP)
    seq_tokens = w.prompt_tokens + w.output_tokens + w.scored_tokens
    capacity = knobs.kv_cache_memory / kv_per_token  # tokens the KV pool holds
    batch = max(1.0, min(knobs.max_batch_size, w.requests, capacity / max(1.0, seq_tokens)))

    # arrival order finds shared prefixes only while the cache still holds them
    shared = w.shared_tokens
    if w.cache_footprint_tokens > capacity > 0:
        reuse = capacity / w.cache_footprint_tokens
        shared = w.static_prefix_tokens + (w.shared_tokens - w.static_prefix_tokens) * reuse
    effective = LLMWorkload(w.requests, w.prompt_tokens, shared, w.static_prefix_tokens, w.output_tokens, w.scored_tokens)
    prefill_tokens = computed_prompt_tokens(effective, knobs) + w.requests * w.scored_tokens
    attn_flops_per_token = 4 * config.num_layers * config.num_heads * config.head_dim * (seq_tokens / 2)

    steps_prefill = math.ceil(prefill_tokens / knobs.prefill_chunk_tokens) if prefill_tokens else 0
    chunk = prefill_tokens / steps_prefill if steps_prefill else 0.0
    tvm_native = knobs.weight_format == "native" and knobs.kernels == "tvm" and hw.quant_gemv_rate_t1 > 0
    if tvm_native:
        prefill_step = (_tvm_native_matmul_seconds(chunk, params, weight_bytes, hw)
                        + chunk * attn_flops_per_token / hw.fp32_flops + overhead)
    else:
        prefill_step = max(chunk * (flops_per_token + attn_flops_per_token) / rate + extra_flops / rate,
                           step_bytes / hw.copy_bandwidth) + overhead
    prefill_s = steps_prefill * prefill_step

    decode_tokens = w.requests * w.output_tokens
    steps_decode = decode_tokens / batch if decode_tokens else 0.0
    ctx = w.prompt_tokens + w.output_tokens / 2
    attn_decode_flops = 4 * config.num_layers * config.num_heads * config.head_dim * ctx
    if tvm_native:
        decode_step = (_tvm_native_matmul_seconds(batch, params, weight_bytes, hw) + batch * attn_decode_flops / hw.fp32_flops
                       + batch * ctx * kv_per_token / hw.copy_bandwidth + overhead)
    else:
        decode_step = max(batch * (flops_per_token + attn_decode_flops) / rate + extra_flops / rate,
                          (step_bytes + batch * ctx * kv_per_token) / hw.copy_bandwidth) + overhead
    decode_s = steps_decode * decode_step
    kv_bytes = min(knobs.kv_cache_memory, batch * seq_tokens * kv_per_token + w.static_prefix_tokens * kv_per_token)
    prefill_s, decode_s = prefill_s * correction[0], decode_s * correction[1]
    return LLMCost(seconds=prefill_s + decode_s, prefill_seconds=prefill_s,
                   decode_seconds=decode_s, computed_prompt_tokens=prefill_tokens,
                   kv_bytes=kv_bytes, batch=batch)


def relational_seconds(rows: float, columns: int, hw: HardwareProfile) -> float:
    """Arrow kernels stream columns: a few bytes per value, read and written, plus a fixed call cost."""
    return rows * max(1, columns) * 16 / hw.copy_bandwidth + 50 * hw.op_overhead_s
