"""TIR expressions over codegen.packed's quantized layout and the PrimFunc signature around it,
shared by the quantized kernels.

Element e (0..31) of block b of row 16*tile + l sits in byte j of that row's block (4-bit:
j = e mod 16, nibble e // 16; Q8_0: j = e), stored at qs[tile, b, j // 4, 4l + j % 4].
"""
from __future__ import annotations

from codegen.packed import GROUP_BYTES, QUANT_BYTES, Q8_OFFSET, TILE_ROWS

# What a packed quant byte (nibble) holds above the signed quant: w = d * (q - offset) [+ m].
QUANT_OFFSET = {"Q4_1": 0, "Q4_0": 8, "Q8_0": Q8_OFFSET}
# Calls with less work (weights x tokens) run on the calling thread. A parallel launch costs
# a few us with spinning workers; from SmolLM2's smallest decoder matrix (576x576 at one token)
# up it pays: batch-1 decode through the engine at 2 threads ran 9.8-13.2 ms/token with every
# decoder linear split over both cores, 16.9-18.0 with only lm_head past the old 2M threshold
# (30 layers' linears streamed from L3/DRAM: 13.0 GB/s on one thread, 18.6 on two).
PARALLEL_MIN_WORK = 1 << 18


def check(qtype: str, k: int) -> None:
    if qtype not in QUANT_BYTES:
        raise ValueError(f"unsupported quantization type {qtype!r}")
    if k % 32:
        raise ValueError(f"K={k} is not a multiple of the GGUF block size 32")


def num_tiles(n: int) -> int:
    return -(-n // TILE_ROWS)


def element(qtype: str, qs, tile, b, e, l):
    """The unsigned quant (before the offset) of element e of row lane l, as int32 (scalar)."""
    from tvm.script import tirx as T

    if qtype == "Q8_0":
        return T.Cast("int32", qs[tile, b, e // GROUP_BYTES, GROUP_BYTES * l + e % GROUP_BYTES])
    j = e % 16
    byte = T.Cast("int32", qs[tile, b, j // GROUP_BYTES, GROUP_BYTES * l + j % GROUP_BYTES])
    return (byte >> (4 * (e // 16))) & 15


def weight(qtype: str, q, d, m):
    """fp32 weights from unsigned quants q (int32 or int32x16) and the block's d, m (fp32, same
    lanes): the same two roundings as catalog.quant (d * q, then + m), so dequantization is bit-exact."""
    from tvm import DataType
    from tvm.script import tirx as T

    lanes = DataType(str(q.ty)).lanes
    as_float = "float32" if lanes == 1 else f"float32x{lanes}"
    if qtype == "Q4_1":
        return d * T.Cast(as_float, q) + m
    offset = T.int32(QUANT_OFFSET[qtype]) if lanes == 1 else T.Broadcast(T.int32(QUANT_OFFSET[qtype]), lanes)
    return d * T.Cast(as_float, q - offset)


def group_quants(qtype: str, lanes, c, h):
    """Unsigned quants (int32x16) of byte c, nibble h (4-bit; 0 for Q8_0) of a group loaded as
    int32x16 `lanes`: one shift and one mask, no shuffles, thanks to the 4-bytes-per-lane layout."""
    from tvm.script import tirx as T

    mask = 255 if qtype == "Q8_0" else 15
    return (lanes >> T.Broadcast(8 * c + 4 * h, TILE_ROWS)) & T.Broadcast(mask, TILE_ROWS)


def gpu_row_dot(qtype: str, n: int, k: int):
    """The GPU twins' inner loop, as a T.macro row_dot(x, qs, scales, mins, out, tile, t, l):
    out[t, 16 tile + l] = x[t] . row 16 tile + l of W, each weight dequantized to fp32 (rows past n are
    not written). One thread per (row, token); the kernels differ in how they spread tiles and tokens."""
    from tvm.script import tirx as T

    NB = k // 32

    @T.macro
    def row_dot(x, qs, scales, mins, out, tile, t, l):
        acc = T.alloc_buffer((1,), "float32", scope="local")
        acc[0] = T.float32(0)
        for b in range(NB):
            for e in range(32):
                acc[0] = acc[0] + x[t, b * 32 + e] * weight(
                    qtype, element(qtype, qs, tile, b, e, l), T.Cast("float32", scales[tile, b, l]),
                    T.Cast("float32", mins[tile, b, l]))
        if tile * TILE_ROWS + l < n:
            out[t, tile * TILE_ROWS + l] = acc[0]

    return row_dot


def quant_kernel(name: str, qtype: str, n: int, k: int, body, out_shape, out_dtype: str = "float32", x_shape=None,
                 screen: bool = False):
    """The PrimFunc `name`([x,] qs, scales, [mins,] [row_norm,] out [, tile_max]) over an n x k matrix in
    codegen.packed's layout, running body([x,] qs, scales, mins, [row_norm,] out [, tile_max]). x (fp32, only when
    x_shape is given) and out take the given shapes, which may share a symbolic dimension (common.symbolic) with
    the body. Only Q4_1 has mins: for the other types the body gets `scales` in their place and must not
    read them. `screen` (quant_gemv's greedy screen, x given) adds an fp32 input row_norm [tiles, 16] and an
    fp32 output tile_max [out_shape[0], tiles]."""
    from tvm.script import tirx as T

    NB, TILES, GROUPS = k // 32, num_tiles(n), QUANT_BYTES[qtype] // GROUP_BYTES
    absent = {"x_h": None} if x_shape is None else {}
    if qtype != "Q4_1":
        absent["mins_h"] = None
    if not screen:
        absent["row_norm_h"] = absent["tile_max_h"] = None

    @T.jit
    def kernel(x_h: T.Optional(T.handle), qs_h: T.handle, scales_h: T.handle, mins_h: T.Optional(T.handle),
               row_norm_h: T.Optional(T.handle), out_h: T.handle, tile_max_h: T.Optional(T.handle)):
        T.func_attr({"tirx.noalias": True})
        if x_h is not None:
            x = T.match_buffer(x_h, x_shape, "float32")
        qs = T.match_buffer(qs_h, (TILES, NB, GROUPS, GROUP_BYTES * TILE_ROWS), "uint8")
        scales = T.match_buffer(scales_h, (TILES, NB, TILE_ROWS), "float16")
        if mins_h is not None:
            mins = T.match_buffer(mins_h, (TILES, NB, TILE_ROWS), "float16")
        else:
            mins = T.meta_var(scales)
        out = T.match_buffer(out_h, out_shape, out_dtype)
        if row_norm_h is not None:
            row_norm = T.match_buffer(row_norm_h, (TILES, TILE_ROWS), "float32")
            tile_max = T.match_buffer(tile_max_h, (out_shape[0], TILES), "float32")
            body(x, qs, scales, mins, row_norm, out, tile_max)
        elif x_h is not None:
            body(x, qs, scales, mins, out)
        else:
            body(qs, scales, mins, out)

    # T.Optional parameters given as None are left out of the PrimFunc's parameters
    return kernel.specialize(**absent).with_attr("global_symbol", name)
