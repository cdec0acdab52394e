"""SwiGLU activation silu(gate) * up on the packed gate|up projection output.

The input is the fused gate_up matmul's output [T, 2F] viewed as [T, 2, F] (a torch
view, no copy): row t holds gate then up. exp is the vectorizable one in common.py.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import exp_f32, symbolic, vectorize_inner


def make_silu_mul(ffn: int):
    from tvm import te, tirx

    T = symbolic("T")
    gate_up = te.placeholder((T, 2, ffn), "float32", name="gate_up")

    def body(t, f):
        g = gate_up[t, 0, f]
        return g / (tirx.const(1.0, "float32") + exp_f32(-g)) * gate_up[t, 1, f]

    out = te.compute((T, ffn), body, name="out")
    return te.create_prim_func([gate_up, out])


def silu_mul_config(target, ffn: int) -> dict:
    return {"lanes": target.vector_lanes}


def schedule_silu_mul(sch, cfg: dict) -> None:
    t, f = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(t)
    vectorize_inner(sch, "out", cfg["lanes"])


SPEC = KernelSpec("silu_mul", make_silu_mul, silu_mul_config, schedule_silu_mul,
                  args=("gate_up", "out"), source_file=__file__)
