"""Packed GGUF blocks (codegen.packed) -> the dense transposed weight W^T [K, N] in fp32 or
bf16, for the bf16 prefill path (dequantize once per call, then torch's bf16 GEMM x @ W^T).

W[n, e] = d * q + m (Q4_1) or d * (q - offset), the same two roundings as catalog.quant, so
the fp32 result is bit-exact (bf16: that value rounded to nearest even, as torch does).
Each 64-byte group of the packed layout holds 4 quant bytes of 16 rows; one shift and mask
per element gives 16 rows' quants, stored as one vector of W^T's row. Blocks of 32 rows of
W^T run in parallel and each writes its rows left to right: writing tile by tile instead
touched a new page every 64 bytes (measured 10x slower).
"""
from __future__ import annotations

from codegen import packed
from codegen.build import KernelSpec
from codegen.kernels import common, quant_common
from codegen.kernels.common import loop_kinds
from codegen.kernels.quant_common import check, element, group_quants, num_tiles, quant_kernel, weight
from codegen.packed import GROUP_BYTES, QUANT_BYTES, TILE_ROWS
from codegen.target import Target

LANES = TILE_ROWS
OUT_DTYPES = ("float32", "bfloat16")


def make_dequantize(qtype: str, n: int, k: int, out_dtype: str = "float32", *, target: Target):
    gpu = target.is_gpu
    from tvm.script import tirx as T

    check(qtype, k)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    OUTER, _ = loop_kinds(gpu)
    NB, TILES, GROUPS = k // 32, num_tiles(n), QUANT_BYTES[qtype] // GROUP_BYTES
    NIBBLES = 2 if qtype != "Q8_0" else 1
    VECTOR_STORE = n % LANES == 0 and not gpu
    ALL_BYTES = T.ramp(0, 1, GROUP_BYTES * LANES)

    @T.macro
    def body(qs, scales, mins, out):
        for b in OUTER(NB):
            for tile in range(TILES):
                if VECTOR_STORE:
                    # (no let-bound vectors: TVM 0.27 gives each one a heap workspace per call)
                    for i in range(GROUPS):
                        for c in T.unroll(GROUP_BYTES):
                            for h in T.unroll(NIBBLES):
                                out[b * 32 + 16 * h + GROUP_BYTES * i + c, T.ramp(tile * LANES, 1, LANES)] = T.Cast(
                                    f"{out_dtype}x{LANES}", weight(
                                        qtype, group_quants(qtype, T.reinterpret("int32x16", qs[tile, b, i, ALL_BYTES]),
                                                            c, h),
                                        T.Cast("float32x16", scales[tile, b, T.ramp(0, 1, LANES)]),
                                        T.Cast("float32x16", mins[tile, b, T.ramp(0, 1, LANES)])))
                else:
                    for e in range(32):
                        for l in range(LANES):
                            if tile * LANES + l < n:
                                out[b * 32 + e, tile * LANES + l] = T.Cast(out_dtype, weight(
                                    qtype, element(qtype, qs, tile, b, e, l), T.Cast("float32", scales[tile, b, l]),
                                    T.Cast("float32", mins[tile, b, l])))

    return quant_kernel("dequantize", qtype, n, k, body, (k, n), out_dtype)


def dequantize_config(target, qtype: str, n: int, k: int, out_dtype: str = "float32") -> dict:
    return {}


def schedule_dequantize(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("dequantize", make_dequantize, dequantize_config, schedule_dequantize,
                  args=("qs", "scales", "mins (Q4_1 only)", "out"), source_file=__file__, scheduled=True,
                  depends=(common.__file__, quant_common.__file__, packed.__file__))
