"""Packed GGUF blocks (codegen.packed) -> the dense fp32 transposed weight W^T [K, N], for
the prefill path (dequantize once per call, then a GEMM x @ W^T).

W[n, 32b + 16h + j] from quant j of block b (h: low/high nibble, or j + 16h for Q8_0):
Q4_1 d*q + m, Q4_0 d*(q - 8), Q8_0 d*q, the same arithmetic as catalog.quant, so the
result is bit-exact. Writing W^T keeps the packed layout's 16 row lanes contiguous: one
vector store per (tile, k). Row tiles run in parallel.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import loop_kinds

LANES = 16


def make_dequantize(qtype: str, n: int, k: int, gpu: bool = False):
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu)
    NB = k // 32
    TILES = -(-n // LANES)
    FOUR_BIT = qtype != "Q8_0"
    J = 16 if FOUR_BIT else 32
    QDT = "uint8" if FOUR_BIT else "int8"

    @T.macro
    def store(out, col, tile, l, value):
        if n % LANES == 0:
            out[col, tile * LANES + l] = value
        else:
            if tile * LANES + l < n:
                out[col, tile * LANES + l] = value

    @T.macro
    def body(qs, scales, mins, out):
        for tile in OUTER(TILES):
            for b in range(NB):
                for j in range(J):
                    if FOUR_BIT:
                        for h in T.unroll(2):
                            for l in VEC(LANES):
                                if qtype == "Q4_1":
                                    store(out, b * 32 + h * 16 + j, tile, l,
                                          T.Cast("float32", scales[tile, b, l])
                                          * T.Cast("float32", (T.Cast("int32", qs[tile, b, j, l]) >> (4 * h)) & 15)
                                          + T.Cast("float32", mins[tile, b, l]))
                                else:
                                    store(out, b * 32 + h * 16 + j, tile, l,
                                          T.Cast("float32", scales[tile, b, l])
                                          * (T.Cast("float32", (T.Cast("int32", qs[tile, b, j, l]) >> (4 * h)) & 15)
                                             - T.float32(8)))
                    else:
                        for l in VEC(LANES):
                            store(out, b * 32 + j, tile, l,
                                  T.Cast("float32", scales[tile, b, l]) * T.Cast("float32", qs[tile, b, j, l]))

    if qtype == "Q4_1":
        @T.prim_func
        def dequantize(qs_h: T.handle, scales_h: T.handle, mins_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            qs = T.match_buffer(qs_h, (TILES, NB, J, LANES), QDT)
            scales = T.match_buffer(scales_h, (TILES, NB, LANES), "float16")
            mins = T.match_buffer(mins_h, (TILES, NB, LANES), "float16")
            out = T.match_buffer(out_h, (k, n), "float32")
            body(qs, scales, mins, out)
    else:
        @T.prim_func
        def dequantize(qs_h: T.handle, scales_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            qs = T.match_buffer(qs_h, (TILES, NB, J, LANES), QDT)
            scales = T.match_buffer(scales_h, (TILES, NB, LANES), "float16")
            out = T.match_buffer(out_h, (k, n), "float32")
            body(qs, scales, scales, out)

    return dequantize


def dequantize_config(target, qtype: str, n: int, k: int) -> dict:
    return {}


def schedule_dequantize(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("dequantize", make_dequantize, dequantize_config, schedule_dequantize,
                  args=("qs", "scales", "mins (Q4_1 only)", "out"), source_file=__file__, scheduled=True)
