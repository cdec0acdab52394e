"""GGUF blocks -> dense fp32 [N, K], for the prefill path (dequantize once, then a GEMM).

w[n, 32b + 16h + l] from byte l of block b: Q4_1 d*q + m, Q4_0 d*(q - 8), Q8_0 d*q.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import f16_to_f32
from catalog.quant import BYTES_PER_BLOCK


def make_dequantize(qtype: str, n: int, k: int):
    from tvm import te, tirx

    nbytes = BYTES_PER_BLOCK[qtype]
    nb = k // 32
    w = te.placeholder((n, nb * nbytes), "uint8", name="blocks")

    def body(row, blk, half, lane):
        d = f16_to_f32(w[row, blk * nbytes], w[row, blk * nbytes + 1])
        if qtype == "Q8_0":
            q = tirx.reinterpret("int8", w[row, blk * nbytes + 2 + half * 16 + lane]).astype("float32")
            return d * q
        offset = 2 if qtype == "Q4_0" else 4
        byte = w[row, blk * nbytes + offset + lane]
        shift = (half * 4).astype("uint8")
        q = ((byte >> shift) & tirx.const(15, "uint8")).astype("float32")
        if qtype == "Q4_0":
            return d * (q - 8.0)
        return d * q + f16_to_f32(w[row, blk * nbytes + 2], w[row, blk * nbytes + 3])

    out = te.compute((n, nb, 2, 16), body, name="out")
    return te.create_prim_func([w, out])


def dequantize_config(target, qtype: str, n: int, k: int) -> dict:
    return {}


def schedule_dequantize(sch, cfg: dict) -> None:
    row, blk, half, lane = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(row)
    sch.unroll(half)
    sch.vectorize(lane)


SPEC = KernelSpec("dequantize", make_dequantize, dequantize_config, schedule_dequantize,
                  args=("blocks", "out"), source_file=__file__)
