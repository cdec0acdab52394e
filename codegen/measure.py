"""Per-kernel timing cases on a model's shapes, for bench/kernels.py.

Each operator of the model is timed at decode and prefill sizes with every available
implementation, interleaved in one process (the machine is shared) and reduced to the
minimum over rounds; each case also carries its bytes and FLOPs per call, which the
benchmark turns into GB/s and GFLOP/s. TVM kernels (and torch's fp32 GEMM) write into
preallocated outputs, so a row times the kernel, not the allocator (a fresh multi-MB output
costs page faults on every call). The torch references allocate as they do in the model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from catalog.model_config import ModelConfig
from catalog.quant import quantize
from codegen import ops
from codegen.linear import TvmBf16Linear, TvmDenseLinear, TvmQuantizedLinear
from codegen.quant_crossover import bf16_on_torch
from operators import tensor_ops as ref
from operators.linear import DenseLinear


@dataclass
class KernelCase:
    op: str
    bytes: int  # compulsory memory traffic of one call
    flops: int
    weight_bytes: int = 0  # the part of `bytes` that stays resident between calls (weights, KV cache)
    impls: dict[str, Callable[[], object]] = field(default_factory=dict)


def time_interleaved(impls: dict[str, Callable[[], object]], rounds: int = 7, min_seconds: float = 0.01) -> dict[str, float]:
    """Seconds per call of each implementation: min over `rounds`, implementations alternating."""
    calls = {}
    for name, fn in impls.items():
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds:
            fn()
            n += 1
        calls[name] = max(1, n)
    best = {name: float("inf") for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def _linear_cases(name: str, n: int, k: int, qtype: str, tokens: int) -> KernelCase:
    """One quantized linear at `tokens` rows: every fused TVM path that applies, against torch
    on the dequantized weight (fp32, and bf16 as the engine runs bf16 weights: oneDNN's prepacked GEMM, AMX where
    the CPU has it, and codegen's bf16 matmul)."""
    weight = quantize(qtype, torch.randn(n, k) * 0.05)
    dense = weight.dequantize()
    dense_bf16 = dense.to(torch.bfloat16)
    x = torch.randn(tokens, k)
    case = KernelCase(f"linear.{name}.{qtype}.T{tokens}", weight.nbytes + 4 * tokens * (k + n), 2 * tokens * n * k,
                      weight_bytes=weight.nbytes)
    bf16_torch = bf16_on_torch()
    layer = TvmQuantizedLinear(weight, prefill_dtype="bf16", bf16_torch=bf16_torch)
    out = torch.empty(tokens, n)  # the fused kernels and torch's fp32 GEMM write into it: kernel time alone
    if tokens <= 16:
        case.impls[f"tvm_gemv_{qtype}"] = lambda: layer.run_into("gemv", x, out)
    if tokens >= 4:
        case.impls[f"tvm_gemm_{qtype}"] = lambda: layer.run_into("gemm", x, out)
    if tokens >= 64:
        case.impls[f"tvm_dequant_{qtype}_{'torch' if bf16_torch else 'tvm'}_bf16"] = lambda: layer.run("dequant_bf16", x)
    if tokens <= 4:
        dense_layer = TvmDenseLinear(dense, gemv_max_tokens=tokens)
        case.impls["tvm_fp32"] = lambda: dense_layer(x)
    dense_t = dense.t()
    case.impls["torch_fp32"] = lambda: torch.mm(x, dense_t, out=out)
    x_bf16, torch_bf16, tvm_bf16 = x.to(torch.bfloat16), DenseLinear(dense_bf16), TvmBf16Linear(dense_bf16)
    case.impls["torch_bf16"] = lambda: torch_bf16(x_bf16)
    case.impls["tvm_bf16"] = lambda: tvm_bf16(x_bf16)
    return case


def _decoder_stream_case(config: ModelConfig, qtype: str) -> KernelCase:
    """One token through every decoder layer's four linears, each layer its own weights, as
    in decode: the weights stream from the last-level cache or DRAM instead of staying in L2."""
    c = config
    shapes = [(c.num_heads * c.head_dim + 2 * c.num_kv_heads * c.head_dim, c.hidden_size),
              (c.hidden_size, c.num_heads * c.head_dim), (2 * c.intermediate_size, c.hidden_size),
              (c.hidden_size, c.intermediate_size)]
    weights = [quantize(qtype, torch.randn(n, k) * 0.05) for _ in range(c.num_layers) for n, k in shapes]
    layers = [TvmQuantizedLinear(w) for w in weights]
    dense_t = [w.dequantize().t() for w in weights]
    calls = [(layer, torch.randn(1, w.cols), torch.empty(1, w.rows)) for layer, w in zip(layers, weights)]
    nbytes = sum(w.nbytes for w in weights)
    flops = 2 * sum(w.rows * w.cols for w in weights)
    case = KernelCase(f"decoder_linears.{qtype}.T1.{c.num_layers}layers", nbytes, flops, weight_bytes=nbytes)
    case.impls[f"tvm_gemv_{qtype}"] = lambda: [layer.run_into("gemv", x, out) for layer, x, out in calls]
    case.impls["torch_fp32"] = lambda: [torch.mm(x, w, out=out) for w, (_, x, out) in zip(dense_t, calls)]
    return case


def kernel_cases(config: ModelConfig, qtype: str = "Q4_1", head_qtype: str = "Q8_0",
                 other_qtypes: tuple[str, ...] = ("Q4_0", "Q8_0"),
                 decode_context: int = 512, prefill_tokens: int = 128, block_size: int = 16) -> list[KernelCase]:
    c = config
    h, f, d = c.hidden_size, c.intermediate_size, c.head_dim
    q_size, kv_size = c.num_heads * d, c.num_kv_heads * d
    cases = []
    for tokens in (1, 4, 8, 16, 64, prefill_tokens):
        cases.append(_linear_cases("qkv", q_size + 2 * kv_size, h, qtype, tokens))
        cases.append(_linear_cases("o", h, q_size, qtype, tokens))
        cases.append(_linear_cases("gate_up", 2 * f, h, qtype, tokens))
        cases.append(_linear_cases("down", h, f, qtype, tokens))
    cases.append(_linear_cases("lm_head", c.vocab_size, h, head_qtype, 1))
    cases.append(_decoder_stream_case(c, qtype))
    for other in other_qtypes:  # the decode GEMV of the other formats, one token
        cases.append(_linear_cases("qkv", q_size + 2 * kv_size, h, other, 1))
        cases.append(_linear_cases("o", h, q_size, other, 1))
        cases.append(_linear_cases("gate_up", 2 * f, h, other, 1))
        cases.append(_linear_cases("down", h, f, other, 1))

    for tokens in (1, prefill_tokens, 2048):  # 2048 rows: past L2, the memory-bound size
        x, w = torch.randn(tokens, h), torch.randn(h)
        case = KernelCase(f"rms_norm.T{tokens}", 4 * (2 * tokens * h + h), 4 * tokens * h)
        case.impls["tvm"] = lambda x=x, w=w, out=torch.empty(tokens, h): ops.rms_norm(x, w, c.rms_norm_eps, out=out)
        case.impls["torch"] = lambda x=x, w=w: ref.rms_norm(x, w, c.rms_norm_eps)
        cases.append(case)

        gate_up = torch.randn(tokens, 2 * f)
        gate, up = gate_up[:, :f], gate_up[:, f:]
        case = KernelCase(f"silu_mul.T{tokens}", 4 * 3 * tokens * f, 6 * tokens * f)
        case.impls["tvm"] = lambda gate=gate, up=up, out=torch.empty(tokens, f): ops.silu_mul(gate, up, out)
        case.impls["torch"] = lambda gate=gate, up=up: ref.silu_mul(gate, up)
        cases.append(case)

        qkv = torch.randn(tokens, q_size + 2 * kv_size)
        cos, sin = ref.rope_cos_sin(torch.arange(tokens), ref.rope_inv_freq(d, c.rope_theta))
        slots = torch.arange(tokens, dtype=torch.int32)
        blocks, offsets = slots // block_size, slots % block_size
        k_layer = torch.zeros(-(-tokens // block_size), c.num_kv_heads, d, block_size)
        v_layer = torch.zeros(-(-tokens // block_size), c.num_kv_heads, block_size, d)
        case = KernelCase(f"rope_qkv.T{tokens}", 4 * tokens * (2 * (q_size + 2 * kv_size) + 2 * d), 6 * tokens * (q_size + kv_size))
        case.impls["tvm"] = lambda qkv=qkv, cos=cos, sin=sin, b=blocks, o=offsets, kl=k_layer, vl=v_layer, \
            q=torch.empty(tokens, c.num_heads, d): ops.rope_qkv(qkv, cos, sin, kl, vl, b, o, c.num_heads, q)

        def torch_rope_qkv(qkv=qkv, cos=cos, sin=sin, b=blocks, o=offsets, kl=k_layer, vl=v_layer):
            q, k, v = ref.rope_qkv(qkv, cos, sin, c.num_heads, c.num_kv_heads)
            kl.permute(0, 3, 1, 2)[b, o] = k
            vl.permute(0, 2, 1, 3)[b, o] = v
            return q
        case.impls["torch"] = torch_rope_qkv
        cases.append(case)

    num_blocks = -(-max(decode_context, prefill_tokens) // block_size)
    k_cache = torch.randn(num_blocks, c.num_kv_heads, d, block_size)  # the kernel's layout
    v_cache = torch.randn(num_blocks, c.num_kv_heads, block_size, d)
    table = torch.arange(num_blocks, dtype=torch.int32)[None, :]
    kv_bytes = 2 * 4 * kv_size

    q1 = torch.randn(1, c.num_heads, d)
    lens = torch.tensor([decode_context], dtype=torch.int32)
    case = KernelCase(f"decode_attention.ctx{decode_context}", kv_bytes * decode_context,
                      4 * c.num_heads * d * decode_context)
    case.impls["tvm"] = lambda out=torch.empty(q1.shape): ops.paged_decode_attention(q1, k_cache, v_cache, table, lens, out)
    k_flat = k_cache.permute(0, 3, 1, 2).reshape(-1, c.num_kv_heads, d)[:decode_context]  # [S, Hkv, D]
    v_flat = v_cache.permute(0, 2, 1, 3).reshape(-1, c.num_kv_heads, d)[:decode_context]
    case.impls["torch"] = lambda: ref.causal_attention(q1, k_flat, v_flat, q_start=decode_context - 1)
    cases.append(case)

    t = prefill_tokens
    qp = torch.randn(t, c.num_heads, d)
    case = KernelCase(f"prefill_attention.T{t}", kv_bytes * t + 8 * t * q_size, 4 * c.num_heads * d * t * (t + 1) // 2)
    qstart = torch.tensor([0, t], dtype=torch.int32)
    plen = torch.tensor([t], dtype=torch.int32)
    case.impls["tvm"] = lambda out=torch.empty(qp.shape): ops.paged_attention(qp, k_cache, v_cache, table, qstart, plen, out)
    kp = k_cache.permute(0, 3, 1, 2).reshape(-1, c.num_kv_heads, d)[:t]
    vp = v_cache.permute(0, 2, 1, 3).reshape(-1, c.num_kv_heads, d)[:t]
    case.impls["torch"] = lambda: ref.causal_attention(qp, kp, vp, q_start=0)
    cases.append(case)
    return cases


def measure_kernel_cases(config: ModelConfig, rounds: int = 7, **options) -> list[tuple[KernelCase, dict[str, float]]]:
    with torch.inference_mode():
        return [(case, time_interleaved(case.impls, rounds)) for case in kernel_cases(config, **options)]
