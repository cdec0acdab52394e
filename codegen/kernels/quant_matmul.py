"""Fused dequantize + matmul over packed GGUF blocks (Q4_1, Q4_0, Q8_0), for decode batches.

out[t, n] = sum_k x[t, k] * W[n, k], W given in codegen.packed's layout: row tiles of 16
rows, one vector lane per row, so a 16-byte load of `qs` holds quant j of 16 rows and
the products are plain lane-wise FMAs against a broadcast x[t, k] (no horizontal sums).
Per row tile, token and 32-weight block b (d, m: f16 scales of each lane's row):

    part_lo += q_j * x[32b + j],  part_hi += q_{j+16} * x[32b + 16 + j]   (j = 0..15)
    acc = fma(d, part_lo + part_hi, fma(m, sum(x[32b : 32b + 32]), acc))

with q the raw nibble (Q4_1), nibble - 8 (Q4_0) or int8 (Q8_0; no m term). The block
sums of x are computed once per call for Q4_1. Every token runs exactly this sequence
whatever the batch, so a token's output does not depend on what it is batched with.

Tokens (dynamic T) are processed 4 at a time, then one tile of the remaining 1-3: each
unpacked quant vector is reused for every token of the tile. Parallel tasks are groups
of 1-2 row tiles (2 when the tile count is even). Loops are written in the TIR below.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import loop_kinds

LANES = 16  # rows per tile = codegen.packed.TILE_ROWS
TOKEN_TILE = 4


def make_quant_matmul(qtype: str, n: int, k: int, gpu: bool = False):
    from tvm.script import tirx as T

    if k % 32:
        raise ValueError(f"K={k} is not a multiple of the GGUF block size 32")
    if qtype not in ("Q4_1", "Q4_0", "Q8_0"):
        raise ValueError(f"unsupported quantization type {qtype!r}")
    OUTER, VEC = loop_kinds(gpu)
    # CUDA codegen has no tirx.fma; nvcc contracts a * b + c by itself
    FMA = (lambda a, b, c: a * b + c) if gpu else T.fma
    SCOPE = "local" if gpu else "global"  # small 'global' buffers live on the CPU stack
    NB = k // 32
    TILES = -(-n // LANES)
    G = 2 if TILES % 2 == 0 else 1
    FOUR_BIT = qtype != "Q8_0"
    HAS_MIN = qtype == "Q4_1"
    BIAS = 8 if qtype == "Q4_0" else 0
    J = 16 if FOUR_BIT else 32
    QDT = "uint8" if FOUR_BIT else "int8"

    @T.macro
    def block_sum(x, t, b, dst, dst_index):
        """sum(x[t, 32b : 32b + 32]) in a fixed pairwise order."""
        pair = T.alloc_buffer((16,), "float32", scope=SCOPE)
        for l in VEC(16):
            pair[l] = x[t, b * 32 + l] + x[t, b * 32 + 16 + l]
        for l in VEC(8):
            pair[l] = pair[l] + pair[l + 8]
        for l in VEC(4):
            pair[l] = pair[l] + pair[l + 4]
        for l in VEC(2):
            pair[l] = pair[l] + pair[l + 2]
        dst[dst_index] = pair[0] + pair[1]

    @T.macro
    def token_tile(x, qs, scales, mins, xsum, out, g, t0, TT):
        acc = T.alloc_buffer((G, TT, LANES), "float32", scope=SCOPE)
        for gi in T.unroll(G):
            for t in T.unroll(TT):
                for l in VEC(LANES):
                    acc[gi, t, l] = T.float32(0)
        for b in range(NB):
            part = T.alloc_buffer((G, TT, 2, LANES), "float32", scope=SCOPE)
            for gi in T.unroll(G):
                for t in T.unroll(TT):
                    for h in T.unroll(2):
                        for l in VEC(LANES):
                            part[gi, t, h, l] = T.float32(0)
            for j in range(16):
                for gi in T.unroll(G):
                    w = T.alloc_buffer((2, LANES), "float32", scope=SCOPE)
                    for l in VEC(LANES):
                        if FOUR_BIT:
                            # widen first: the masks then run on the 32-bit lanes
                            w[0, l] = T.Cast("float32", (T.Cast("int32", qs[g * G + gi, b, j, l]) & 15) - BIAS)
                            w[1, l] = T.Cast("float32", (T.Cast("int32", qs[g * G + gi, b, j, l]) >> 4) - BIAS)
                        else:
                            w[0, l] = T.Cast("float32", qs[g * G + gi, b, j, l])
                            w[1, l] = T.Cast("float32", qs[g * G + gi, b, j + 16, l])
                    for t in T.unroll(TT):
                        for h in T.unroll(2):
                            for l in VEC(LANES):
                                part[gi, t, h, l] = FMA(w[h, l], x[t0 + t, b * 32 + h * 16 + j], part[gi, t, h, l])
            xs = T.alloc_buffer((TT,), "float32", scope=SCOPE)
            if HAS_MIN:
                for t in T.unroll(TT):
                    if gpu:
                        block_sum(x, t0 + t, b, xs, t)
                    else:
                        xs[t] = xsum[t0 + t, b]
            for gi in T.unroll(G):
                for t in T.unroll(TT):
                    for l in VEC(LANES):
                        if HAS_MIN:
                            acc[gi, t, l] = FMA(T.Cast("float32", scales[g * G + gi, b, l]),
                                                  part[gi, t, 0, l] + part[gi, t, 1, l],
                                                  FMA(T.Cast("float32", mins[g * G + gi, b, l]), xs[t], acc[gi, t, l]))
                        else:
                            acc[gi, t, l] = FMA(T.Cast("float32", scales[g * G + gi, b, l]),
                                                  part[gi, t, 0, l] + part[gi, t, 1, l], acc[gi, t, l])
        for gi in T.unroll(G):
            for t in T.unroll(TT):
                if n % LANES == 0:
                    for l in VEC(LANES):
                        out[t0 + t, (g * G + gi) * LANES + l] = acc[gi, t, l]
                else:
                    for l in range(LANES):
                        if (g * G + gi) * LANES + l < n:
                            out[t0 + t, (g * G + gi) * LANES + l] = acc[gi, t, l]

    @T.macro
    def all_tokens(x, qs, scales, mins, xsum, out, num_tokens):
        for g in OUTER(TILES // G):
            for i in range(num_tokens // TOKEN_TILE):
                token_tile(x, qs, scales, mins, xsum, out, g, i * TOKEN_TILE, TOKEN_TILE)
            if num_tokens % 4 == 3:
                token_tile(x, qs, scales, mins, xsum, out, g, num_tokens - 3, 3)
            elif num_tokens % 4 == 2:
                token_tile(x, qs, scales, mins, xsum, out, g, num_tokens - 2, 2)
            elif num_tokens % 4 == 1:
                token_tile(x, qs, scales, mins, xsum, out, g, num_tokens - 1, 1)

    if HAS_MIN:
        @T.prim_func
        def quant_matmul(x_h: T.handle, qs_h: T.handle, scales_h: T.handle, mins_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            num_tokens = T.int64()
            x = T.match_buffer(x_h, (num_tokens, k), "float32")
            qs = T.match_buffer(qs_h, (TILES, NB, J, LANES), QDT)
            scales = T.match_buffer(scales_h, (TILES, NB, LANES), "float16")
            mins = T.match_buffer(mins_h, (TILES, NB, LANES), "float16")
            out = T.match_buffer(out_h, (num_tokens, n), "float32")
            if gpu:
                all_tokens(x, qs, scales, mins, x, out, num_tokens)  # block sums formed per tile
            else:
                xsum = T.alloc_buffer((num_tokens, NB), "float32")
                for t in range(num_tokens):
                    for b in range(NB):
                        block_sum(x, t, b, xsum, (t, b))
                all_tokens(x, qs, scales, mins, xsum, out, num_tokens)
    else:
        @T.prim_func
        def quant_matmul(x_h: T.handle, qs_h: T.handle, scales_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            num_tokens = T.int64()
            x = T.match_buffer(x_h, (num_tokens, k), "float32")
            qs = T.match_buffer(qs_h, (TILES, NB, J, LANES), QDT)
            scales = T.match_buffer(scales_h, (TILES, NB, LANES), "float16")
            out = T.match_buffer(out_h, (num_tokens, n), "float32")
            all_tokens(x, qs, scales, scales, x, out, num_tokens)

    return quant_matmul


def quant_matmul_config(target, qtype: str, n: int, k: int) -> dict:
    return {}


def schedule_quant_matmul(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("quant_matmul", make_quant_matmul, quant_matmul_config, schedule_quant_matmul,
                  args=("x", "qs", "scales", "mins (Q4_1 only)", "out"), source_file=__file__, scheduled=True)
