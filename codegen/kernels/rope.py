"""Rotary position embedding in HF's rotate-half layout (operators.tensor_ops.apply_rope).

x [T, H, D] may be a strided view (the q or k columns of the fused qkv output: row
stride = qkv width, head stride D), so the kernel reads it in place; cos/sin [T, D]
and the output [T, H, D] are contiguous. For i < D/2:
    out[i]       = x[i] * cos[i] - x[i + D/2] * sin[i]
    out[i + D/2] = x[i + D/2] * cos[i + D/2] + x[i] * sin[i + D/2]
Written as TIR loops (TE cannot declare a strided input): rows one after another (too
little work to wake threads), the half dimension vectorized. x may be bf16 (the q/k of a
bf16 projection), widened exactly on load; the output is fp32.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import loop_kinds


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def make_rope(heads: int, head_dim: int, x_dtype: str = "fp32", gpu: bool = False):
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu, cpu_threads=False)

    if head_dim % 2:
        raise ValueError(f"head_dim {head_dim} must be even for rotate-half RoPE")
    H, D, HALF = heads, head_dim, head_dim // 2
    XT = DTYPES[x_dtype]

    def load(v):
        return T.Cast("float32", v)

    @T.prim_func
    def rope(x_h: T.handle, cos_h: T.handle, sin_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        row_stride = T.int64()
        x = T.match_buffer(x_h, (num_tokens, H, D), XT, strides=(row_stride, D, 1))
        cos = T.match_buffer(cos_h, (num_tokens, D), "float32")
        sin = T.match_buffer(sin_h, (num_tokens, D), "float32")
        out = T.match_buffer(out_h, (num_tokens, H, D), "float32")
        for t in OUTER(num_tokens):
            for h in range(H):
                for i in VEC(HALF):
                    out[t, h, i] = load(x[t, h, i]) * cos[t, i] - load(x[t, h, i + HALF]) * sin[t, i]
                for i in VEC(HALF):
                    out[t, h, i + HALF] = load(x[t, h, i + HALF]) * cos[t, i + HALF] + load(x[t, h, i]) * sin[t, i + HALF]

    return rope


def rope_config(target, heads: int, head_dim: int, x_dtype: str = "fp32") -> dict:
    return {}


def schedule_rope(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("rope", make_rope, rope_config, schedule_rope,
                  args=("x", "cos", "sin", "out"), source_file=__file__, scheduled=True)
