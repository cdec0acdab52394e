"""RoPE on the fused qkv projection, with K and V stored straight into the paged cache.

One call per layer replaces rotating q, rotating k, splitting v and two scatter writes
into the cache (five torch/TVM calls, ~60% of a batch-1 decode layer's attention time):

    qkv [T, (Hq + 2 Hkv) D]  (fp32, or bf16 from a bf16 projection: widened exactly)
    q_out[t, h]                          = rope(q_t,h)          fp32 [T, Hq, D]
    k_cache[blocks[t], h, :, offsets[t]] = rope(k_t,h)          keys transposed per block
    v_cache[blocks[t], h, offsets[t], :] = v_t,h                in the cache's dtype (fp32 | bf16)

in HF's rotate-half layout (operators.tensor_ops.apply_rope): for i < D/2
    rope(x)[i]       = x[i] * cos[i] - x[i + D/2] * sin[i]
    rope(x)[i + D/2] = x[i + D/2] * cos[i + D/2] + x[i] * sin[i + D/2].
The caches are one layer's [num_blocks, Hkv, D, block_size] / [num_blocks, Hkv,
block_size, D] (codegen/kernels/paged_attention.py's layout). Tokens run on one thread
at decode sizes and are split over threads from common.PARALLEL_MIN_ROWS; head
dimensions are vectorized except the key scatter, whose elements are block_size apart.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels import common
from codegen.kernels.common import PARALLEL_MIN_ROWS, kv_block_lines, loop_kinds, prefetch
from codegen.target import Target

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def make_rope_qkv(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int, x_dtype: str = "fp32",
                  kv_dtype: str = "fp32", *, target: Target):
    gpu = target.is_gpu
    from tvm.script import tirx as T

    if head_dim % 2:
        raise ValueError(f"head_dim {head_dim} must be even for rotate-half RoPE")
    OUTER, VEC = loop_kinds(gpu, cpu_threads=False)
    HQ, HKV, D, HALF, BS = num_q_heads, num_kv_heads, head_dim, head_dim // 2, block_size
    WIDTH = (HQ + 2 * HKV) * D
    XT, KT = DTYPES[x_dtype], DTYPES[kv_dtype]
    # A token's key is one column of its block's transposed keys [D, BS]: D cache lines, each cold (the block was
    # last touched a step ago, a whole pass over the weights and KV before), and a store to a missing line waits
    # for it. So the lines of the token AHEAD rows on are fetched for writing while this one is computed: 64
    # decode rows into a 30-layer pool (Zen 4, 2 threads, median of 60 sweeps) 241 -> 147 us a layer in one A/B
    # (1, 4 and 8 rows ahead: 157, 165, 153), within that machine's noise in two later ones.
    AHEAD = 2
    K_PER_LINE, V_LINES, V_PER_LINE = kv_block_lines(KT, BS, D)

    def x(qkv, t, col):
        return T.Cast("float32", qkv[t, col])

    @T.macro
    def fetch_slot(blocks, offsets, k_cache, v_cache, t):
        for h in T.unroll(HKV):
            for i in T.unroll(D // K_PER_LINE):
                T.evaluate(prefetch(k_cache, T.Cast("int64", blocks[t]), h, i * K_PER_LINE,
                                    T.Cast("int64", offsets[t]), write=True))
            for c in T.unroll(V_LINES):
                T.evaluate(prefetch(v_cache, T.Cast("int64", blocks[t]), h, T.Cast("int64", offsets[t]),
                                    c * V_PER_LINE, write=True))

    @T.macro
    def row(qkv, cos, sin, blocks, offsets, k_cache, v_cache, q, t, num_tokens):
        if not gpu:
            if t == 0:  # the first rows' own lines, all requested at once rather than as each store waits
                for a in T.unroll(AHEAD):
                    if T.Cast("int64", a) < num_tokens:
                        fetch_slot(blocks, offsets, k_cache, v_cache, a)
            if t + AHEAD < num_tokens:
                fetch_slot(blocks, offsets, k_cache, v_cache, t + AHEAD)
        for h in range(HQ):
            for i in VEC(HALF):
                q[t, h, i] = x(qkv, t, h * D + i) * cos[t, i] - x(qkv, t, h * D + i + HALF) * sin[t, i]
            for i in VEC(HALF):
                q[t, h, i + HALF] = (x(qkv, t, h * D + i + HALF) * cos[t, i + HALF]
                                     + x(qkv, t, h * D + i) * sin[t, i + HALF])
        for h in range(HKV):
            for i in range(HALF):
                k_cache[T.Cast("int64", blocks[t]), h, i, T.Cast("int64", offsets[t])] = T.Cast(
                    KT, x(qkv, t, (HQ + h) * D + i) * cos[t, i] - x(qkv, t, (HQ + h) * D + i + HALF) * sin[t, i])
                k_cache[T.Cast("int64", blocks[t]), h, i + HALF, T.Cast("int64", offsets[t])] = T.Cast(
                    KT, x(qkv, t, (HQ + h) * D + i + HALF) * cos[t, i + HALF]
                    + x(qkv, t, (HQ + h) * D + i) * sin[t, i + HALF])
            for i in VEC(D):
                v_cache[T.Cast("int64", blocks[t]), h, T.Cast("int64", offsets[t]), i] = T.Cast(
                    KT, x(qkv, t, (HQ + HKV + h) * D + i))

    @T.prim_func
    def rope_qkv(qkv_h: T.handle, cos_h: T.handle, sin_h: T.handle, blocks_h: T.handle, offsets_h: T.handle,
                 k_cache_h: T.handle, v_cache_h: T.handle, q_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        num_blocks = T.int64()
        qkv = T.match_buffer(qkv_h, (num_tokens, WIDTH), XT)
        cos = T.match_buffer(cos_h, (num_tokens, D), "float32")
        sin = T.match_buffer(sin_h, (num_tokens, D), "float32")
        blocks = T.match_buffer(blocks_h, (num_tokens,), "int32")
        offsets = T.match_buffer(offsets_h, (num_tokens,), "int32")
        k_cache = T.match_buffer(k_cache_h, (num_blocks, HKV, D, BS), KT)
        v_cache = T.match_buffer(v_cache_h, (num_blocks, HKV, BS, D), KT)
        q = T.match_buffer(q_h, (num_tokens, HQ, D), "float32")
        if gpu:
            for t in OUTER(num_tokens):
                row(qkv, cos, sin, blocks, offsets, k_cache, v_cache, q, t, num_tokens)
        elif num_tokens >= PARALLEL_MIN_ROWS:
            for t in T.parallel(num_tokens):
                row(qkv, cos, sin, blocks, offsets, k_cache, v_cache, q, t, num_tokens)
        else:
            for t in T.serial(num_tokens):
                row(qkv, cos, sin, blocks, offsets, k_cache, v_cache, q, t, num_tokens)

    return rope_qkv


def rope_qkv_config(target, **params) -> dict:
    return {}


def schedule_rope_qkv(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("rope_qkv", make_rope_qkv, rope_qkv_config, schedule_rope_qkv,
                  args=("qkv", "cos", "sin", "slot_blocks", "slot_offsets", "k_cache", "v_cache", "q"),
                  source_file=__file__, scheduled=True,
                  depends=(common.__file__,))
