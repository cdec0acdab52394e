"""TVM twins of the model's elementwise operators, with operators.tensor_ops' signatures.

`tvm_model_ops(config)` returns the callables for operators.llama.ModelOps; each
compiles (or loads) its kernel for the model's static sizes on first use per size.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

from catalog.model_config import ModelConfig
from codegen.build import get_kernel
from codegen.target import Target


# get_kernel's lookup (parameter dict, frozen key, lock) costs ~6 µs, more than a decode-size
# kernel; these run ~150 times per token, so each remembers its kernels by plain tuples.
@lru_cache(maxsize=None)
def _kernel(name: str, target: Target | None, *params: tuple[str, object]):
    return get_kernel(name, dict(params), target).fn


def aligned(t: torch.Tensor) -> torch.Tensor:
    """`t` contiguous at a 64-byte aligned address (a copy only when it is not).

    TVM compiles vector loads that assume 64-byte aligned buffers and does not check; a
    view into a memory-mapped GGUF file (a norm weight) or at a row offset can be off."""
    t = t.contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


def tvm_view(t: torch.Tensor):
    """A TVM tensor over t's memory (zero-copy: writes through it land in t, and t stays alive with it), for an
    argument passed on many calls: a torch tensor goes through DLPack on every call (~1 us)."""
    import tvm

    if not t.is_contiguous():
        raise ValueError("a TVM view needs a contiguous tensor (aligned() makes one)")
    return tvm.runtime.from_dlpack(t)


_TVM_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8"}


def dtype_name(t) -> str:
    """'fp32' | 'bf16' | 'int8' of a torch tensor or of its TVM view."""
    return DTYPE_NAMES[t.dtype] if isinstance(t, torch.Tensor) else _TVM_DTYPES[str(t.dtype)]


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int8: "int8"}
# Outputs are allocated with empty_like or int sizes: torch.empty(t.shape) parses a torch.Size
# for ~3 us more per call, and a decode step makes ~150 of these calls.


# The kernels by their parameters (what the wrappers below call, and what codegen.captured_forward binds once).
def rms_norm_kernel(hidden: int, eps: float, out_dtype: str, target: Target | None = None):
    return _kernel("rms_norm", target, ("hidden", hidden), ("eps", float(eps)), ("out_dtype", out_dtype))


def add_rms_norm_kernel(hidden: int, eps: float, y_dtype: str, out_dtype: str, target: Target | None = None):
    return _kernel("add_rms_norm", target, ("hidden", hidden), ("eps", float(eps)), ("y_dtype", y_dtype),
                   ("out_dtype", out_dtype))


def silu_mul_kernel(ffn: int, dtype: str, target: Target | None = None):
    return _kernel("silu_mul", target, ("ffn", ffn), ("dtype", dtype))


def rope_qkv_kernel(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int, x_dtype: str, kv_dtype: str,
                    target: Target | None = None):
    return _kernel("rope_qkv", target, ("num_q_heads", num_q_heads), ("num_kv_heads", num_kv_heads),
                   ("head_dim", head_dim), ("block_size", block_size), ("x_dtype", x_dtype), ("kv_dtype", kv_dtype))


def paged_attention_kernel(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int, kv_dtype: str,
                           target: Target | None = None):
    return _kernel("paged_attention", target, ("num_q_heads", num_q_heads), ("num_kv_heads", num_kv_heads),
                   ("head_dim", head_dim), ("block_size", block_size), ("kv_dtype", kv_dtype))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None,
             out: torch.Tensor | None = None, target: Target | None = None) -> torch.Tensor:
    """x [T, H] fp32, weight [H] -> [T, H] in out_dtype (fp32 or bf16; default fp32), into `out` when given
    (contiguous, 64-byte aligned: what a benchmark passes to time the kernel alone)."""
    x = aligned(x)
    out_dtype = out_dtype or torch.float32
    out = torch.empty_like(x, dtype=out_dtype) if out is None else out
    rms_norm_kernel(x.shape[1], eps, DTYPE_NAMES[out_dtype], target)(x, aligned(weight), out)
    return out


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float,
                 out_dtype: torch.dtype | None = None, target: Target | None = None) -> torch.Tensor:
    """x [T, H] fp32 += y [T, H] (fp32 or bf16) in place; returns rms_norm(x) [T, H] in out_dtype."""
    if not (x.is_contiguous() and x.data_ptr() % 64 == 0):
        raise ValueError("add_rms_norm updates x in place: it must be a contiguous, 64-byte aligned tensor")
    y = aligned(y)
    out_dtype = out_dtype or torch.float32
    out = torch.empty_like(x, dtype=out_dtype)
    add_rms_norm_kernel(x.shape[1], eps, DTYPE_NAMES[y.dtype], DTYPE_NAMES[out_dtype], target)(x, y, aligned(weight),
                                                                                                out)
    return out


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_blocks: torch.Tensor, slot_offsets: torch.Tensor, num_q_heads: int,
             out: torch.Tensor | None = None, target: Target | None = None) -> torch.Tensor:
    """RoPE'd q [T, Hq, D] fp32 (into `out` when given) from the fused projection qkv [T, (Hq + 2 Hkv) D]
    (fp32 or bf16); the RoPE'd keys and the values are written into one layer's paged cache (k_cache
    [NB, Hkv, D, bs], v_cache [NB, Hkv, bs, D], fp32 or bf16) at slots (slot_blocks[t], slot_offsets[t]),
    int32 [T]. cos/sin [T, D]."""
    _, num_kv_heads, head_dim, block_size = k_cache.shape
    q = torch.empty(qkv.shape[0], num_q_heads, head_dim, device=qkv.device) if out is None else out
    if isinstance(cos, torch.Tensor):
        cos, sin = cos.contiguous(), sin.contiguous()
    rope_qkv_kernel(num_q_heads, num_kv_heads, head_dim, block_size, DTYPE_NAMES[qkv.dtype], dtype_name(k_cache),
                    target)(aligned(qkv), cos, sin, slot_blocks, slot_offsets, k_cache, v_cache, q)
    return q


def silu_mul(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor | None = None,
             target: Target | None = None) -> torch.Tensor:
    """gate, up [T, F] fp32 or bf16 (row-strided views are read in place) -> [T, F] in their dtype (into `out`
    when given)."""
    gate = gate if gate.stride(1) == 1 else gate.contiguous()
    up = up if up.stride(1) == 1 else up.contiguous()
    out = torch.empty(gate.shape[0], gate.shape[1], dtype=gate.dtype, device=gate.device) if out is None else out
    silu_mul_kernel(gate.shape[1], DTYPE_NAMES[gate.dtype], target)(gate, up, out)
    return out


def attention_lanes(target: Target | None = None) -> int:
    """The paged-attention kernel's lanes (each takes every lanes-th task): TVM's CPU threads (the count its pool
    is made with, codegen/__init__.py; asking the pool would make it, before interleaved_with_torch could set its
    spinning), or GPU blocks."""
    if target is not None and target.is_gpu:
        return GPU_ATTENTION_LANES
    return int(os.environ["TVM_NUM_THREADS"])


GPU_ATTENTION_LANES = 256


def attention_partials(num_seqs: int, num_q_heads: int, num_kv_heads: int, head_dim: int, max_blocks: int,
                       block_size: int, lanes: int, device: str = "cpu") -> torch.Tensor:
    """The paged-attention kernel's scratch [B, Hq, chunks, D + 2] for the chunk states of split decode rows:
    room for every chunk of a max_blocks-block sequence where the batch is small enough to be split, else one
    chunk (nothing is split). Left unwritten until the kernel splits."""
    from codegen.kernels.paged_attention import CHUNK_TOKENS, SPLIT_BELOW

    chunk = max(1, CHUNK_TOKENS // block_size) * block_size
    chunks = -(-max_blocks * block_size // chunk) if num_seqs * num_kv_heads < SPLIT_BELOW * lanes else 1
    return torch.empty(num_seqs, num_q_heads, chunks, head_dim + 2, device=device)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    query_start: torch.Tensor, context_lens: torch.Tensor, out: torch.Tensor | None = None,
                    target: Target | None = None, int8_scales: tuple | None = None,
                    partials: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of a ragged batch over a paged cache (codegen/kernels/paged_attention.py).

    q [T, Hq, D] fp32; k_cache [num_blocks, Hkv, D, block_size] (keys transposed per block) and
    v_cache [num_blocks, Hkv, block_size, D], fp32 or bf16; block_tables [B, max_blocks] int32;
    query_start [B + 1] int32 (sequence b owns q rows query_start[b]..query_start[b+1]-1);
    context_lens [B] int32 (cached tokens of b, its new ones included). Returns [T, Hq, D] fp32
    (`out` when given). An int8 cache comes with int8_scales = (k_scale, v_scale [num_blocks, Hkv, block_size],
    k_channel, v_channel [Hkv, D]), fp32 (runtime.model_runner.PagedKVCache's int8 layout). `partials`: the
    kernel's scratch (attention_partials), made here when not given.
    """
    q = q.contiguous()
    out = torch.empty_like(q) if out is None else out
    kv_dtype = dtype_name(k_cache)
    num_seqs, num_kv_heads, block_size = block_tables.shape[0], k_cache.shape[1], k_cache.shape[3]
    lanes = attention_lanes(target)
    if partials is None:
        partials = attention_partials(num_seqs, q.shape[1], num_kv_heads, q.shape[2], block_tables.shape[1],
                                      block_size, lanes, "cpu" if target is None or not target.is_gpu else "cuda")
    kernel = paged_attention_kernel(q.shape[1], num_kv_heads, q.shape[2], block_size, kv_dtype, target)
    if kv_dtype == "int8":
        if int8_scales is None:
            raise ValueError("an int8 KV cache needs its int8_scales (k_scale, v_scale, k_channel, v_channel)")
        kernel(q, k_cache, v_cache, block_tables, query_start, context_lens, *int8_scales, out, partials, lanes)
    else:
        kernel(q, k_cache, v_cache, block_tables, query_start, context_lens, out, partials, lanes)
    return out


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, out=None,
                           target: Target | None = None) -> torch.Tensor:
    """One query per sequence; the kernel's cache layout (see paged_attention)."""
    query_start = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return paged_attention(q, k_cache, v_cache, block_tables, query_start, context_lens, out, target)


def warm_up(config: ModelConfig, dtypes: tuple[str, ...] = ("fp32",)) -> None:
    """Compile or load the row-wise kernels the model will call with activations in `dtypes` (the attention
    kernels depend on the engine's KV cache: warm_up_attention)."""
    for dtype in dtypes:
        get_kernel("rms_norm", {"hidden": config.hidden_size, "eps": float(config.rms_norm_eps), "out_dtype": dtype})
        get_kernel("add_rms_norm", {"hidden": config.hidden_size, "eps": float(config.rms_norm_eps), "y_dtype": dtype,
                                    "out_dtype": dtype})
        get_kernel("silu_mul", {"ffn": config.intermediate_size, "dtype": dtype})


def warm_up_attention(config: ModelConfig, block_size: int, x_dtype: str, kv_dtype: str,
                      target: Target | None = None) -> None:
    """Compile or load the RoPE + KV-write and paged-attention kernels of an engine's KV cache (an int8 cache is
    written by torch: PagedKVCache.write quantizes)."""
    if kv_dtype != "int8":
        get_kernel("rope_qkv", {"num_q_heads": config.num_heads, "num_kv_heads": config.num_kv_heads,
                                "head_dim": config.head_dim, "block_size": block_size, "x_dtype": x_dtype,
                                "kv_dtype": kv_dtype}, target)
    get_kernel("paged_attention", {"num_q_heads": config.num_heads, "num_kv_heads": config.num_kv_heads,
                                   "head_dim": config.head_dim, "block_size": block_size, "kv_dtype": kv_dtype},
               target)