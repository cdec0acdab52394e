"""SwiGLU activation out = silu(gate) * up.

gate and up [T, F] may be strided views (the two halves of the fused gate_up output,
row stride 2F), read in place. Rows run on one thread at decode sizes, split over
threads from common.PARALLEL_MIN_ROWS. exp is the vectorizable one from common.py (LLVM would
call libm once per lane). TIR loops because TE cannot declare strided inputs. dtype 'bf16'
reads a bf16 projection's output and writes bf16 for the next bf16 projection; the
arithmetic stays fp32 (one rounding, at the store).
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels import common
from codegen.kernels.common import PARALLEL_MIN_ROWS, exp_f32, loop_kinds
from codegen.target import Target


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def make_silu_mul(ffn: int, dtype: str = "fp32", lanes: int = 16, *, target: Target):
    gpu = target.is_gpu
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu, cpu_threads=False)

    F = ffn
    CHUNKS, TAIL = divmod(F, lanes)
    DT = DTYPES[dtype]

    def silu_times_up(g, u):
        g32 = T.Cast("float32", g)
        return T.Cast(DT, g32 / (T.float32(1) + exp_f32(-g32)) * T.Cast("float32", u))

    @T.macro
    def row(gate, up, out, t):
        for c in range(CHUNKS):
            for l in VEC(lanes):
                out[t, c * lanes + l] = silu_times_up(gate[t, c * lanes + l], up[t, c * lanes + l])
        for l in range(TAIL):
            out[t, CHUNKS * lanes + l] = silu_times_up(gate[t, CHUNKS * lanes + l], up[t, CHUNKS * lanes + l])

    @T.prim_func
    def silu_mul(gate_h: T.handle, up_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        gate_stride = T.int64()
        up_stride = T.int64()
        gate = T.match_buffer(gate_h, (num_tokens, F), DT, strides=(gate_stride, 1))
        up = T.match_buffer(up_h, (num_tokens, F), DT, strides=(up_stride, 1))
        out = T.match_buffer(out_h, (num_tokens, F), DT)
        if gpu:
            for t in OUTER(num_tokens):
                row(gate, up, out, t)
        elif num_tokens >= PARALLEL_MIN_ROWS:
            for t in T.parallel(num_tokens):
                row(gate, up, out, t)
        else:
            for t in T.serial(num_tokens):
                row(gate, up, out, t)

    return silu_mul


def silu_mul_config(target, ffn: int, dtype: str = "fp32") -> dict:
    return {}


def schedule_silu_mul(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("silu_mul", make_silu_mul, silu_mul_config, schedule_silu_mul,
                  args=("gate", "up", "out"), source_file=__file__, scheduled=True,
                  depends=(common.__file__,))
