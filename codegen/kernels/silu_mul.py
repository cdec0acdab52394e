"""SwiGLU activation out = silu(gate) * up.

gate and up [T, F] may be strided views (the two halves of the fused gate_up output,
row stride 2F), read in place. exp is the vectorizable one from common.py (LLVM would
call libm once per lane). TIR loops because TE cannot declare strided inputs.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import exp_f32, loop_kinds


def make_silu_mul(ffn: int, lanes: int = 16, gpu: bool = False):
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu, cpu_threads=False)

    F = ffn
    CHUNKS, TAIL = divmod(F, lanes)

    @T.prim_func
    def silu_mul(gate_h: T.handle, up_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        gate_stride = T.int64()
        up_stride = T.int64()
        gate = T.match_buffer(gate_h, (num_tokens, F), "float32", strides=(gate_stride, 1))
        up = T.match_buffer(up_h, (num_tokens, F), "float32", strides=(up_stride, 1))
        out = T.match_buffer(out_h, (num_tokens, F), "float32")
        for t in OUTER(num_tokens):
            for c in range(CHUNKS):
                for l in VEC(lanes):
                    out[t, c * lanes + l] = gate[t, c * lanes + l] / (T.float32(1) + exp_f32(-gate[t, c * lanes + l])) * up[t, c * lanes + l]
            for l in range(TAIL):
                out[t, CHUNKS * lanes + l] = gate[t, CHUNKS * lanes + l] / (T.float32(1) + exp_f32(-gate[t, CHUNKS * lanes + l])) * up[t, CHUNKS * lanes + l]

    return silu_mul


def silu_mul_config(target, ffn: int) -> dict:
    return {}


def schedule_silu_mul(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("silu_mul", make_silu_mul, silu_mul_config, schedule_silu_mul,
                  args=("gate", "up", "out"), source_file=__file__, scheduled=True)
