"""The cost model: a roofline per engine step against the calibrated hardware profile.

A query's model calls cost three kinds of time, which calibration corrects separately
(planner/calibration.py):
- prefill: the linears over each chunk of prompt tokens (FLOPs / FLOP/s + weight bytes /
  bandwidth per step; the lm_head only over the rows whose logits are needed) plus attention
  over the cached context, at the measured rate of the engine's attention backend;
- decode: one step per generated token of the longest sequence in each wave of max_batch_size
  sequences, every step reading every weight once, plus attention over each sequence's context;
  with speculative decoding a sequence's step runs its drafts too (more rows through the linears and
  attention) and emits 1 + accepted tokens (fewer steps);
- overhead: Python and kernel launches, per engine step (per layer), per sequence in a step,
  and per request (chat template, tokenizer, result).
Estimates come in, seconds and bytes go out; nothing here chooses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from catalog.hardware import HardwareProfile
from codegen.quant_crossover import CAPTURED_MAX_TOKENS, SCREEN_MIN_ROWS, crossover_for
from operators.engine_config import EngineConfig

COST_MODEL_VERSION = 4  # observations priced by another version do not calibrate this one
OPS_PER_LAYER = 11  # launches of one decoder layer besides its norms and SwiGLU (matmuls, rope, attention, views)
# A captured step (codegen/captured_forward.py: at most the GEMV's rows, every operator one TVM kernel) calls a
# layer's 9 kernels pre-bound, ~0.5 us each: about one tiny torch op a layer
CAPTURED_OPS_PER_LAYER = 1.0
# The residual adds, RMS norms and SwiGLU of one decoder layer, by kernel set and activation dtype: (launches,
# passes over a [rows, hidden] fp32 tensor, passes over a [rows, intermediate] one). torch runs them as ATen ops
# (operators/tensor_ops.py: add_rms_norm is 7 ops, 8 with a bf16 output; silu_mul 2, 5 in bf16), each reading and
# writing whole tensors; codegen's fused kernels are one launch each, one pass over their inputs and outputs.
ELEMENTWISE_PER_LAYER = {("torch", "fp32"): (16, 20.0, 5.0), ("torch", "bf16"): (21, 23.0, 9.5),
                         ("tvm", "fp32"): (3, 8.0, 3.0), ("tvm", "bf16"): (3, 7.0, 1.5)}
# llguidance's next-token mask and its unpacking into a logits mask: ~0.1 ms a generated token, measured on the
# 2-core Sapphire Rapids, where a tiny torch op takes ~2 us
OPS_PER_CONSTRAINED_TOKEN = 50
OPS_PER_STEP = 100  # embedding, final norm, logits, sampling, scheduling and batch tensors, in Python
OPS_PER_ROW = 4  # per sequence in a step: its slots, its sampled token, detokenizing it (~35 us measured)
OPS_PER_ROW_GATHER = 3  # the torch attention path also builds each row's gather indices and mask
OPS_PER_REQUEST = 32  # chat template, tokenizer, submit, result (~270 us measured for a W1 prompt)
QUANT_DEQUANT_FLOPS_PER_WEIGHT = 4  # scale, offset, unpack: what the torch 'native' path does per weight per call
KV_ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "int8": 1}


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
    longest_output_tokens: float = 0.0  # the longest request's output: a wave decodes until it ends (0: the mean)
    constrained: bool = False  # structured output: every generated token pays for the grammar's mask
    argmax_only: bool = False  # every sampled token is the logits' argmax alone (SamplingParams.argmax_only)
    # speculative decoding, per (method, draft tokens k): (drafted, accepted) tokens per sequence and decode step,
    # learned per template (planner/choose.py) or the prior
    speculation: tuple[tuple[str, int, float, float], ...] = ()
    draft: tuple | None = None  # (ModelConfig, weight bytes per format) of the draft model speculative='draft' runs

    def drafts(self, knobs: EngineConfig) -> tuple[float, float]:
        """(drafted, accepted) per sequence and decode step under the knobs' speculation; (0, 0) without."""
        if knobs.speculative == "off":
            return 0.0, 0.0
        for method, k, drafted, accepted in self.speculation:
            if (method, k) == (knobs.speculative, knobs.num_speculative_tokens):
                return drafted, accepted
        return 0.0, 0.0


@dataclass(frozen=True)
class LLMCost:
    seconds: float
    prefill_seconds: float
    decode_seconds: float
    overhead_seconds: float  # Python and launches: per step, per sequence in a step, per request
    computed_prompt_tokens: float  # all requests, after the prefix cache
    kv_bytes: float  # peak KV pool use
    batch: float  # effective concurrent sequences
    steps: float = 0.0  # engine steps, prefill and decode
    # the rows each step's linears were priced at (means): prefill steps' tokens and logit rows, decode steps'
    # sequences (planner/operator_kernels.py shows the kernels these rows take)
    prefill_rows: float = 0.0
    prefill_logit_rows: float = 0.0
    decode_rows: float = 0.0
    # argmax-only rows' lm_head runs codegen.greedy_screen (priced at its rate) in steps of SCREEN_MIN_ROWS or more
    # logit rows, decode steps only without speculation (verifying drafts reads their full logits)
    greedy_screen: bool = False


def kv_bytes_per_token(config, kv_cache_dtype: str) -> float:
    """K and V of one token in every layer, in the cache's element type."""
    per_element = KV_ELEMENT_BYTES[kv_cache_dtype] + (4 / config.head_dim if kv_cache_dtype == "int8" else 0.0)
    return config.kv_bytes_per_token * per_element / 4  # int8: one fp32 scale per token and head, K and V


def kv_restore_seconds(tier: str, block_bytes: float, hw: HardwareProfile) -> float:
    """One KV block back into the pool from the host or disk tier, at the measured rate (unmeasured: a quarter of
    the copy bandwidth, the order of a decompressing or checksumming read)."""
    rate = hw.kv_host_restore_rate if tier == "host" else hw.kv_disk_restore_rate
    return block_bytes / (rate if rate > 0 else hw.copy_bandwidth / 4)


def _bytes_and_rate(knobs: EngineConfig, weight_bytes: dict, params: float, hw: HardwareProfile) -> tuple[float, float, float]:
    """(bytes moved per forward pass, FLOP/s of its matmuls, extra FLOPs per pass) for a weight format."""
    if knobs.weight_format == "bf16":
        return weight_bytes["bf16"], getattr(hw, _bf16_rate(knobs, hw)), 0.0
    if knobs.weight_format == "native" and knobs.kernels == "torch":
        # the torch path dequantizes every block to fp32 on every call: read blocks, write + read fp32
        return weight_bytes["native"] + 8 * params, hw.fp32_flops, QUANT_DEQUANT_FLOPS_PER_WEIGHT * params
    if knobs.weight_format == "native":
        return weight_bytes["native"], hw.fp32_flops, QUANT_DEQUANT_FLOPS_PER_WEIGHT * params
    return weight_bytes["fp32"], hw.fp32_flops, 0.0


def _tvm_native_matmul_seconds(tokens: float, params: float, weight_bytes: dict, hw: HardwareProfile,
                               prefill_dtype: str = "fp32") -> float:
    """What codegen.linear.TvmQuantizedLinear runs, at its kernels' measured rates, along the crossover's
    paths: the fused GEMV up to gemv_max_tokens rows, the fused GEMM above (unpacks each weight once per
    call, then fp32 FMAs per token), and with prefill_dtype 'bf16' from bf16_min_tokens rows a dequantize
    to bf16 (once per call) plus torch's bf16 GEMM. The crossover is the machine's (hw.quant_gemv_max_tokens)."""
    path = crossover_for(hw.quant_gemv_max_tokens).path(tokens, prefill_dtype)
    if tokens <= 1:
        return params / hw.quant_gemv_rate_t1
    if path == "gemv":
        if tokens <= 4 or hw.quant_gemv_batch_rate <= 0:
            return tokens * params / hw.quant_gemv_rate_t4
        # past 4 rows each token's blocks are in L1 already: a token costs the GEMV's arithmetic alone
        return 4 * params / hw.quant_gemv_rate_t4 + (tokens - 4) * params / hw.quant_gemv_batch_rate
    if path == "dequant_bf16":
        if hw.quant_bf16_gemm_rate > 0:
            return params / hw.quant_dequant_bf16_rate + tokens * params / hw.quant_bf16_gemm_rate
        # not timed on this machine: read the blocks, write + read the bf16 W^T, then torch's bf16 GEMM rate
        return (weight_bytes["native"] + 4 * params) / hw.copy_bandwidth + tokens * 2 * params / hw.bf16_flops
    if hw.quant_gemm_rate > 0:
        return params / hw.quant_gemm_unpack_rate + tokens * params / hw.quant_gemm_rate
    # GEMM not timed on this machine: read the blocks once, then torch's fp32 GEMM rate
    return weight_bytes["native"] / hw.copy_bandwidth + tokens * 2 * params / hw.fp32_flops


def computed_prompt_tokens(w: LLMWorkload, knobs: EngineConfig) -> float:
    """Prompt tokens prefill must compute for all requests, after the prefix cache.

    The first request computes its whole prompt; each later one what it does not share.
    The cache matches whole blocks only, so half a block of every shared prefix is recomputed.
    """
    if not knobs.prefix_cache or w.requests <= 0:
        return w.requests * w.prompt_tokens
    shared = max(0.0, w.shared_tokens - knobs.kv_block_size / 2)
    return w.prompt_tokens + (w.requests - 1) * max(0.0, w.prompt_tokens - shared)


def linear_seconds(rows: float, weights: float, knobs: EngineConfig, weight_bytes: dict, hw: HardwareProfile) -> float:
    """`rows` through linears of `weights` weights in all (weight_bytes: their bytes in each format) on the knobs'
    weight path: TVM's quantized kernels at their measured rates, else the roofline of the format's matmul."""
    if _measured_tvm(knobs, hw):
        return _tvm_native_matmul_seconds(rows, weights, weight_bytes, hw, knobs.prefill_dtype)
    step_bytes, rate, extra_flops = _bytes_and_rate(knobs, weight_bytes, weights, hw)
    # the sum, not the max: these linears do not hide streaming the weights behind their arithmetic
    # (fp32 decode of 16 rows measured 196 ms a step on the 2-core box, the max says 100, the sum 156)
    return (2 * rows * weights + extra_flops) / rate + step_bytes / hw.copy_bandwidth


def linear_rates(rows: float, knobs: EngineConfig, hw: HardwareProfile) -> tuple[str, ...]:
    """The HardwareProfile figures linear_seconds prices `rows` with on the knobs' weight path."""
    if _measured_tvm(knobs, hw):
        path = crossover_for(hw.quant_gemv_max_tokens).path(rows, knobs.prefill_dtype)
        if path == "gemv":
            if rows <= 1:
                return ("quant_gemv_rate_t1",)
            return ("quant_gemv_rate_t4",) if rows <= 4 or hw.quant_gemv_batch_rate <= 0 else \
                ("quant_gemv_rate_t4", "quant_gemv_batch_rate")
        if path == "dequant_bf16":
            return (("quant_dequant_bf16_rate", "quant_bf16_gemm_rate") if hw.quant_bf16_gemm_rate > 0
                    else ("copy_bandwidth", "bf16_flops"))
        if hw.quant_gemm_rate > 0:
            return "quant_gemm_unpack_rate", "quant_gemm_rate"
        return "copy_bandwidth", "fp32_flops"
    return (_bf16_rate(knobs, hw) if knobs.weight_format == "bf16" else "fp32_flops", "copy_bandwidth")


def _bf16_rate(knobs: EngineConfig, hw: HardwareProfile) -> str:
    if _codegen_bf16_matmul(knobs, hw):
        return "bf16_matmul_flops"
    return "bf16_torch_linear_flops" if hw.bf16_torch_linear_flops > 0 else "bf16_flops"


def _codegen_bf16_matmul(knobs: EngineConfig, hw: HardwareProfile) -> bool:
    """bf16 weights on TVM kernels run codegen's bf16 matmul where it was measured (bf16_matmul_flops: the CPU
    has no AMX), else torch's bf16 GEMM."""
    return knobs.kernels == "tvm" and hw.bf16_matmul_flops > 0


def _measured_tvm(knobs: EngineConfig, hw: HardwareProfile) -> bool:
    return knobs.weight_format == "native" and knobs.kernels == "tvm" and hw.quant_gemv_rate_t1 > 0


def priced_weights(config) -> float:
    """The weights whose bytes weight_bytes counts: every parameter, a tied lm_head's twice."""
    head = config.vocab_size * config.hidden_size
    return config.num_parameters + (head if config.tie_word_embeddings else 0)


def weight_share(weight_bytes: dict, weights: float, config) -> dict:
    """The bytes, in each format, of `weights` of the model's weights (at the model's mean bytes per weight)."""
    total = priced_weights(config)
    return {k: v * weights / total for k, v in weight_bytes.items()}


def _matmul_seconds(tokens: float, logit_rows: float, knobs: EngineConfig, config, weight_bytes: dict,
                    hw: HardwareProfile, screen: bool = False) -> float:
    """One forward pass's linears: the decoder layers over `tokens` rows, the lm_head over `logit_rows` (`screen`:
    argmaxes of a quantized lm_head, through the greedy screen where screens(...) says it runs)."""
    head = config.vocab_size * config.hidden_size
    layers = config.flops_per_token / 2 - head  # multiply-adds of one token through every layer
    seconds = linear_seconds(tokens, layers, knobs, weight_share(weight_bytes, layers, config), hw)
    if screen and screens(logit_rows, knobs, hw):
        head_seconds = screen_seconds(logit_rows, head, weight_share(weight_bytes, head, config), hw)
    elif logit_rows > 0 or not _measured_tvm(knobs, hw):  # (the roofline streams the weights even for no rows)
        head_seconds = linear_seconds(logit_rows, head, knobs, weight_share(weight_bytes, head, config), hw)
    else:
        head_seconds = 0.0
    if _measured_tvm(knobs, hw):
        return seconds + head_seconds
    # the roofline streams every weight on every pass, the embedding table and norms included
    rest = priced_weights(config) - layers - head
    return seconds + head_seconds + linear_seconds(0.0, rest, knobs, weight_share(weight_bytes, rest, config), hw)


def screens(logit_rows: float, knobs: EngineConfig, hw: HardwareProfile) -> bool:
    """Whether argmax-only logit rows of a quantized lm_head, `logit_rows` a step, go through codegen.greedy_screen
    (timed here) on TVM's kernels: with native weights from SCREEN_MIN_ROWS rows (TvmQuantizedLinear.argmax), with
    bf16 ones on codegen's bf16 matmul at any (TvmBf16Linear.argmax: the screen reads the blocks, half the bytes)."""
    if knobs.kernels != "tvm" or hw.quant_screen_rate <= 0 or logit_rows <= 0:
        return False
    if knobs.weight_format == "bf16":
        return _codegen_bf16_matmul(knobs, hw)
    return _measured_tvm(knobs, hw) and logit_rows >= SCREEN_MIN_ROWS


def screen_seconds(rows: float, weights: float, weight_bytes: dict, hw: HardwareProfile) -> float:
    """The greedy screen over `rows` rows of an lm_head of `weights` weights (weight_bytes: its bytes in each format):
    its rate was timed at 64 rows; a few rows wait on reading the blocks."""
    return max(rows * weights / hw.quant_screen_rate, weight_bytes["native"] / hw.copy_bandwidth)


def captured(rows: float, knobs: EngineConfig, config) -> bool:
    """Whether the model runner runs a step of `rows` rows captured: up to CAPTURED_MAX_TOKENS rows, and the
    linears (without a bias), norms and attention all TVM kernels over an fp32 or bf16 KV cache (an int8 one is
    quantized in torch)."""
    return (0 < rows <= CAPTURED_MAX_TOKENS and knobs.weight_format == "native" and knobs.kernels == "tvm"
            and knobs.attention_kernel == "tvm" and knobs.resolved_kv_cache_dtype() != "int8"
            and not config.attention_bias)


def _ops_per_step(rows: float, knobs: EngineConfig, config) -> float:
    """Launches of one engine step: every layer's (pre-bound when captured) and the step's own Python."""
    per_layer = CAPTURED_OPS_PER_LAYER if captured(rows, knobs, config) else OPS_PER_LAYER + _elementwise(knobs)[0]
    return per_layer * config.num_layers + OPS_PER_STEP


def _elementwise(knobs: EngineConfig) -> tuple[int, float, float]:
    return ELEMENTWISE_PER_LAYER[(knobs.kernels, "bf16" if knobs.weight_format == "bf16" else "fp32")]


def _elementwise_seconds(rows: float, knobs: EngineConfig, config, hw: HardwareProfile) -> float:
    """The memory traffic of one step's norms and SwiGLU over `rows` rows (their launches count as overhead)."""
    _, hidden_passes, ffn_passes = _elementwise(knobs)
    per_row = hidden_passes * config.hidden_size + ffn_passes * config.intermediate_size
    return config.num_layers * rows * per_row * 4 / hw.copy_bandwidth


def _attention_seconds(pairs: float, phase: str, knobs: EngineConfig, config, hw: HardwareProfile) -> float:
    """Attention over `pairs` (query, cached key) pairs in every layer, at the measured FLOP/s of the
    engine's backend for this phase; unmeasured, the roofline, where the torch backend's gather
    copies the context (read + write) before SDPA reads it again and the TVM kernel reads it in place.
    Decode is never faster than reading its context from memory: the rate was measured on one layer's KV
    (in cache), while a step reads every layer's, usually more than the caches hold (batch 1 over 2,000
    tokens: 92 MB a token, 4.3 ms measured against 1.5 ms at the rate). A prefill chunk's rows re-read the
    same blocks, from cache. The rates were measured over an fp32 cache; a bf16 one is priced the same per
    FLOP (both backends convert it to the activations' type before the arithmetic)."""
    flops = 4 * config.num_layers * config.num_heads * config.head_dim * pairs
    rate = getattr(hw, f"attention_{knobs.attention_kernel}_{phase}_flops", 0.0)
    reads = 1 if knobs.attention_kernel == "tvm" else 3
    kv_read = reads * pairs * kv_bytes_per_token(config, knobs.resolved_kv_cache_dtype())
    if rate > 0 and phase == "prefill":
        return flops / rate
    return max(flops / (rate or hw.fp32_flops), kv_read / hw.copy_bandwidth)


def llm_cost(w: LLMWorkload, knobs: EngineConfig, config, weight_bytes: dict, hw: HardwareProfile,
             correction: tuple[float, float, float] = (1.0, 1.0, 1.0), quantized_head: bool = True) -> LLMCost:
    """correction: learned (prefill, decode, overhead) factors of this machine (planner/calibration.py);
    quantized_head: the lm_head is stored in GGUF blocks (what the greedy screen reads)."""
    argmax_only = w.argmax_only and quantized_head  # argmaxes the screen can take
    kv_per_token = kv_bytes_per_token(config, knobs.resolved_kv_cache_dtype())
    seq_tokens = w.prompt_tokens + w.output_tokens + w.scored_tokens
    capacity = knobs.kv_cache_memory / kv_per_token  # tokens the KV pool holds
    batch = max(1.0, min(knobs.max_batch_size, w.requests, capacity / max(1.0, seq_tokens)))

    # arrival order finds shared prefixes only while the cache still holds them
    shared = w.shared_tokens
    if w.cache_footprint_tokens > capacity > 0:
        reuse = capacity / w.cache_footprint_tokens
        shared = w.static_prefix_tokens + (w.shared_tokens - w.static_prefix_tokens) * reuse
    prefill_tokens = computed_prompt_tokens(replace(w, shared_tokens=shared), knobs) + w.requests * w.scored_tokens

    # prefill: chunks of at most prefill_chunk_tokens, at most max_batch_size sequences a step;
    # its logits are each request's first generated token, or every scored token
    steps_prefill = math.ceil(max(prefill_tokens / knobs.prefill_chunk_tokens, w.requests / knobs.max_batch_size)
                              ) if prefill_tokens > 0 else 0
    logit_rows = w.requests * (w.scored_tokens if w.scored_tokens else min(1.0, w.output_tokens))
    prefill_s = prefill_rows = prefill_logit_rows = 0.0
    if steps_prefill:
        prefill_rows, prefill_logit_rows = prefill_tokens / steps_prefill, logit_rows / steps_prefill
        prefill_s = steps_prefill * (_matmul_seconds(prefill_rows, prefill_logit_rows, knobs, config, weight_bytes, hw,
                                                     argmax_only and not w.scored_tokens)
                                     + _elementwise_seconds(prefill_rows, knobs, config, hw))
        # each request computes its last `computed` tokens, each attending to everything before it
        computed = prefill_tokens / max(w.requests, 1e-9)
        sequence = w.prompt_tokens + w.scored_tokens
        prefill_s += _attention_seconds(prefill_tokens * max(computed / 2, sequence - computed / 2), "prefill",
                                        knobs, config, hw)

    # decode: the prefill step samples each request's first token; a wave of `batch` sequences
    # steps until its longest one ends, later waves fill the slots as sequences finish
    per_request = max(0.0, w.output_tokens - 1)
    longest = max(per_request, (w.longest_output_tokens or w.output_tokens) - 1)
    decode_tokens = w.requests * per_request
    steps_decode = (math.ceil(w.requests / batch) - 1) * per_request + longest if decode_tokens > 0 else 0.0
    decode_s = rows = 0.0
    drafted, accepted = w.drafts(knobs)
    if steps_decode:
        rows = decode_tokens / steps_decode * (1 + drafted)  # tokens through the model in an average decode step
        steps_decode /= 1 + accepted
        # verifying drafts reads their full logits
        decode_s = steps_decode * (_matmul_seconds(rows, rows, knobs, config, weight_bytes, hw,
                                                   argmax_only and knobs.speculative == "off")
                                   + _elementwise_seconds(rows, knobs, config, hw))
        context = w.prompt_tokens + w.output_tokens / 2
        decode_s += _attention_seconds(decode_tokens * context * (1 + drafted) / (1 + accepted), "decode", knobs,
                                       config, hw)
        if knobs.speculative == "draft" and w.draft is not None:  # k one-token passes of the draft model a step
            draft_config, draft_bytes = w.draft
            sequences = rows / (1 + drafted)
            decode_s += steps_decode * knobs.num_speculative_tokens * _matmul_seconds(
                sequences, sequences, knobs, draft_config, dict(draft_bytes), hw)

    per_row = OPS_PER_ROW + (OPS_PER_ROW_GATHER if knobs.attention_kernel == "torch" else 0)
    ops = (steps_prefill * _ops_per_step(prefill_rows, knobs, config) + steps_decode * _ops_per_step(rows, knobs, config)
           + (decode_tokens / (1 + accepted) + w.requests) * per_row + w.requests * OPS_PER_REQUEST)
    if knobs.speculative == "draft" and w.draft is not None:
        ops += steps_decode * knobs.num_speculative_tokens * _ops_per_step(rows / (1 + drafted), knobs, w.draft[0])
    if w.constrained:
        ops += decode_tokens * OPS_PER_CONSTRAINED_TOKEN
    overhead_s = hw.op_overhead_s * ops

    kv_bytes = min(knobs.kv_cache_memory, batch * seq_tokens * kv_per_token + w.static_prefix_tokens * kv_per_token)
    prefill_s, decode_s, overhead_s = prefill_s * correction[0], decode_s * correction[1], overhead_s * correction[2]
    return LLMCost(seconds=prefill_s + decode_s + overhead_s, prefill_seconds=prefill_s, decode_seconds=decode_s,
                   overhead_seconds=overhead_s, computed_prompt_tokens=prefill_tokens, kv_bytes=kv_bytes, batch=batch,
                   steps=steps_prefill + steps_decode, prefill_rows=prefill_rows,
                   prefill_logit_rows=prefill_logit_rows, decode_rows=rows,
                   greedy_screen=argmax_only and screens(SCREEN_MIN_ROWS, knobs, hw))


def relational_seconds(rows: float, columns: int, hw: HardwareProfile) -> float:
    """Arrow kernels stream columns: a few bytes per value, read and written, plus a fixed call cost."""
    return rows * max(1, columns) * 16 / hw.copy_bandwidth + 50 * hw.op_overhead_s
