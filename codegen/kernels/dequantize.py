"""Packed GGUF blocks (codegen.packed) -> a dense bf16 or fp32 weight, for the bf16 prefill path (dequantize
once per call, then a bf16 matmul over the call's rows).

W[n, e] = d * q + m (Q4_1) or d * (q - offset), the same two roundings as catalog.quant, so
the fp32 result is bit-exact (bf16: that value rounded to nearest even, as torch does).
Each 64-byte group of the packed layout holds 4 quant bytes of 16 rows; one shift and mask
per element gives 16 rows' quants. Two layouts:

- 'transposed': W^T [K, N] for torch's bf16 GEMM (where the CPU has AMX), each vector of 16 rows
  one piece of a W^T row. Blocks of 32 rows of W^T run in parallel and each writes its rows left
  to right: writing tile by tile instead touched a new page every 64 bytes (measured 10x slower).
- 'pairs': codegen.kernels.bf16_matmul's packed layout (uint16, bf16 bits) for its kernel: two
  elements of a row are two bytes (or nibbles) of one 32-bit lane, so a pair of columns of 16
  rows is two shifts and masks, two roundings and one 64-byte store. Each 32-column block writes a
  contiguous 4 KB run per weight block.
"""
from __future__ import annotations

from codegen import packed
from codegen.build import KernelSpec
from codegen.kernels import bf16_matmul, common, quant_common
from codegen.kernels.common import loop_kinds
from codegen.kernels.quant_common import check, element, group_quants, num_tiles, quant_kernel, weight
from codegen.packed import GROUP_BYTES, QUANT_BYTES, TILE_ROWS
from codegen.target import Target

LANES = TILE_ROWS
OUT_DTYPES = ("float32", "bfloat16")
LAYOUTS = ("transposed", "pairs")


def make_dequantize(qtype: str, n: int, k: int, out_dtype: str = "float32", layout: str = "transposed", *,
                    target: Target):
    gpu = target.is_gpu
    from tvm.script import tirx as T

    check(qtype, k)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "pairs":
        if out_dtype != "bfloat16":
            raise ValueError("the 'pairs' layout holds bf16")
        return _make_pairs(qtype, n, k, target)
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


def _make_pairs(qtype: str, n: int, k: int, target: Target):
    """W in bf16_matmul.pack's layout for `target` (rows past n: zero)."""
    from tvm.script import tirx as T

    gpu = target.is_gpu
    OUTER, _ = loop_kinds(gpu)
    V, _ = bf16_matmul.tiles(target)
    NB, TILES, GROUPS = k // 32, num_tiles(n), QUANT_BYTES[qtype] // GROUP_BYTES
    BLOCKS = bf16_matmul.blocks(n, V)
    NIBBLES = 2 if qtype != "Q8_0" else 1
    ALL_BYTES = T.ramp(0, 1, GROUP_BYTES * LANES)

    def bits(f, lanes: int = LANES):
        """fp32 -> the bf16 bits (low 16 of a uint32) it rounds to, nearest even (finite values)."""
        u = T.reinterpret(f"uint32x{lanes}", f) if lanes > 1 else T.reinterpret("uint32", f)
        one, half = (T.Broadcast(T.uint32(1), lanes), T.Broadcast(T.uint32(0x7FFF), lanes)) if lanes > 1 else (
            T.uint32(1), T.uint32(0x7FFF))
        sixteen = T.Broadcast(T.uint32(16), lanes) if lanes > 1 else T.uint32(16)
        return (u + half + ((u >> sixteen) & one)) >> sixteen

    def column(qtype, i, c, h):
        """The element of byte c, nibble h of group i, within its 32-block."""
        return GROUP_BYTES * i + c if qtype == "Q8_0" else 16 * h + GROUP_BYTES * i + c

    @T.macro
    def vector_body(qs, scales, mins, out):
        for b in OUTER(NB):
            for tile in range(BLOCKS * V):
                if tile < TILES:
                    for i in range(GROUPS):
                        for h in T.unroll(NIBBLES):
                            for cp in T.unroll(GROUP_BYTES // 2):  # byte pairs (2 cp, 2 cp + 1)
                                out[tile // V, (b * 32 + column(qtype, i, 2 * cp, h)) // 2,
                                    T.ramp(2 * LANES * (tile % V), 1, 2 * LANES)] = T.reinterpret(
                                    f"uint16x{2 * LANES}", (bits(weight(
                                        qtype, group_quants(qtype, T.reinterpret("int32x16", qs[tile, b, i, ALL_BYTES]),
                                                            2 * cp + 1, h),
                                        T.Cast("float32x16", scales[tile, b, T.ramp(0, 1, LANES)]),
                                        T.Cast("float32x16", mins[tile, b, T.ramp(0, 1, LANES)])))
                                        << T.Broadcast(T.uint32(16), LANES)) | bits(weight(
                                        qtype, group_quants(qtype, T.reinterpret("int32x16", qs[tile, b, i, ALL_BYTES]),
                                                            2 * cp, h),
                                        T.Cast("float32x16", scales[tile, b, T.ramp(0, 1, LANES)]),
                                        T.Cast("float32x16", mins[tile, b, T.ramp(0, 1, LANES)]))))
                else:  # a block's tiles past the matrix: zero rows
                    for p in range(16):
                        out[tile // V, b * 16 + p, T.ramp(2 * LANES * (tile % V), 1, 2 * LANES)] = T.Broadcast(
                            T.uint16(0), 2 * LANES)

    @T.macro
    def scalar_body(qs, scales, mins, out):
        for b in OUTER(NB):
            for tile in range(BLOCKS * V):
                for e in range(32):
                    for l in range(LANES):
                        if tile < TILES:
                            out[tile // V, (b * 32 + e) // 2, 2 * LANES * (tile % V) + 2 * l + e % 2] = T.Cast(
                                "uint16", bits(weight(qtype, element(qtype, qs, tile, b, e, l),
                                                      T.Cast("float32", scales[tile, b, l]),
                                                      T.Cast("float32", mins[tile, b, l])), lanes=1))
                        else:
                            out[tile // V, (b * 32 + e) // 2, 2 * LANES * (tile % V) + 2 * l + e % 2] = T.uint16(0)

    return quant_kernel("dequantize", qtype, n, k, scalar_body if gpu else vector_body, (BLOCKS, k // 2, 2 * LANES * V),
                        "uint16")


def dequantize_config(target, qtype: str, n: int, k: int, out_dtype: str = "float32", layout: str = "transposed") -> dict:
    return {}


def schedule_dequantize(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("dequantize", make_dequantize, dequantize_config, schedule_dequantize,
                  args=("qs", "scales", "mins (Q4_1 only)", "out"), source_file=__file__, scheduled=True,
                  depends=(common.__file__, quant_common.__file__, packed.__file__, bf16_matmul.__file__))
