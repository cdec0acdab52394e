"""Fused dequantize + matmul over GGUF blocks (Q4_1, Q4_0, Q8_0), weights never dequantized in memory.

out[t, n] = sum_k x[t, k] * W[n, k], W given as its raw GGUF blocks uint8 [N, K/32 * bytes].
Block b of row n covers k = 32b .. 32b+31; inside a 4-bit block, byte j holds element j
in its low nibble and element j + 16 in its high nibble. Lane l (0..15) of the vector
accumulator therefore pairs x[32b + l] with x[32b + 16 + l], and the block's scales
factor out of the lane sums:

    Q4_1: d * (q_lo * x_lo + q_hi * x_hi) + m * (x_lo + x_hi)
    Q4_0: d * ((q_lo - 8) * x_lo + (q_hi - 8) * x_hi)
    Q8_0: d * (q_0 * x_lo + q_1 * x_hi)              (q int8, bytes 2..33)

`x_lo + x_hi` is computed once per call (a tiny stage shared by every row). The tokens
dimension T is dynamic; each token re-reads the (cache-resident) row tile, which is
right for decode batches; large T goes through dequantize + a dense matmul instead.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import f16_to_f32, rfactor_rows, symbolic
from catalog.quant import BYTES_PER_BLOCK


def make_quant_matmul(qtype: str, n: int, k: int):
    from tvm import te, tirx

    if k % 32:
        raise ValueError(f"K={k} is not a multiple of the GGUF block size 32")
    nbytes = BYTES_PER_BLOCK[qtype]
    nb = k // 32
    T = symbolic("T")
    x = te.placeholder((T, k), "float32", name="x")
    w = te.placeholder((n, nb * nbytes), "uint8", name="blocks")
    b = te.reduce_axis((0, nb), "b")
    lane = te.reduce_axis((0, 16), "lane")

    def scale(row, blk, offset):
        return f16_to_f32(w[row, blk * nbytes + offset], w[row, blk * nbytes + offset + 1])

    def x_lo(t):
        return x[t, b * 32 + lane]

    def x_hi(t):
        return x[t, b * 32 + 16 + lane]

    if qtype == "Q8_0":
        def body(t, row):
            q0 = tirx.reinterpret("int8", w[row, b * nbytes + 2 + lane]).astype("float32")
            q1 = tirx.reinterpret("int8", w[row, b * nbytes + 18 + lane]).astype("float32")
            return te.sum(scale(row, b, 0) * (q0 * x_lo(t) + q1 * x_hi(t)), axis=[b, lane])
        args = [x, w]
    else:
        offset = 2 if qtype == "Q4_0" else 4

        def nibbles(row):
            byte = w[row, b * nbytes + offset + lane]
            lo = (byte & tirx.const(15, "uint8")).astype("float32")
            hi = (byte >> tirx.const(4, "uint8")).astype("float32")
            return lo, hi

        if qtype == "Q4_0":
            def body(t, row):
                lo, hi = nibbles(row)
                return te.sum(scale(row, b, 0) * ((lo - 8.0) * x_lo(t) + (hi - 8.0) * x_hi(t)), axis=[b, lane])
        else:
            x_pair = te.compute((T, nb, 16), lambda t, blk, l: x[t, blk * 32 + l] + x[t, blk * 32 + 16 + l],
                                name="x_pair")

            def body(t, row):
                lo, hi = nibbles(row)
                return te.sum(scale(row, b, 0) * (lo * x_lo(t) + hi * x_hi(t))
                              + scale(row, b, 2) * x_pair[t, b, lane], axis=[b, lane])
        args = [x, w]
    out = te.compute((T, n), body, name="out")
    return te.create_prim_func([*args, out])


def quant_matmul_config(target, qtype: str, n: int, k: int) -> dict:
    return {"rows": 4 if n % 4 == 0 else (2 if n % 2 == 0 else 1)}


def schedule_quant_matmul(sch, cfg: dict) -> None:
    rfactor_rows(sch, "out", cfg["rows"], 16)


SPEC = KernelSpec("quant_matmul", make_quant_matmul, quant_matmul_config, schedule_quant_matmul,
                  args=("x", "blocks", "out"), source_file=__file__)
