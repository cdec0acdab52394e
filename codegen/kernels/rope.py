"""Rotary position embedding in HF's rotate-half layout (operators.tensor_ops.apply_rope).

Tensors are passed as views that split the head dim into its two halves (no copies):
x [T, H, 2, D/2], cos/sin [T, 2, D/2]. For half s and index i:
out[s, i] = x[s, i] * cos[s, i] + (2s - 1) * x[1 - s, i] * sin[s, i].
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import symbolic, vectorize_inner


def make_rope(heads: int, head_dim: int):
    from tvm import te, tirx

    if head_dim % 2:
        raise ValueError(f"head_dim {head_dim} must be even for rotate-half RoPE")
    half = head_dim // 2
    T = symbolic("T")
    x = te.placeholder((T, heads, 2, half), "float32", name="x")
    cos = te.placeholder((T, 2, half), "float32", name="cos")
    sin = te.placeholder((T, 2, half), "float32", name="sin")

    def body(t, h, s, i):
        sign = (s * 2 - 1).astype("float32")
        return x[t, h, s, i] * cos[t, s, i] + sign * x[t, h, 1 - s, i] * sin[t, s, i]

    out = te.compute((T, heads, 2, half), body, name="out")
    return te.create_prim_func([x, cos, sin, out])


def rope_config(target, heads: int, head_dim: int) -> dict:
    return {"lanes": target.vector_lanes}


def schedule_rope(sch, cfg: dict) -> None:
    t, h, s, i = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(t)
    vectorize_inner(sch, "out", cfg["lanes"])


SPEC = KernelSpec("rope", make_rope, rope_config, schedule_rope,
                  args=("x", "cos", "sin", "out"), source_file=__file__)
