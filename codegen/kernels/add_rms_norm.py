"""Residual add fused with the next RMSNorm: x += y (in place), out = rms_norm(x) * weight.

The decoder adds each sublayer's output into the fp32 residual stream and normalizes the
sum for the next sublayer; fused, the row is read once and written twice instead of three
reads and two writes over two kernels. y is the projection's output (fp32, or bf16 from a
bf16 projection, widened exactly); out is fp32 or bf16 (what the next projection takes).
Rows run one after another (waking threads costs more than a row, see common.loop_kinds);
the sum of squares uses 16 vector lanes folded at the end of the row.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import loop_kinds

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
LANES = 16


def make_add_rms_norm(hidden: int, eps: float, y_dtype: str = "fp32", out_dtype: str = "fp32", gpu: bool = False):
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu, cpu_threads=False)
    SCOPE = "local" if gpu else "global"
    H = hidden
    CHUNKS, TAIL = divmod(H, LANES)
    YT, OT = DTYPES[y_dtype], DTYPES[out_dtype]

    @T.prim_func
    def add_rms_norm(x_h: T.handle, y_h: T.handle, w_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        x = T.match_buffer(x_h, (num_tokens, H), "float32")
        y = T.match_buffer(y_h, (num_tokens, H), YT)
        weight = T.match_buffer(w_h, (H,), "float32")
        out = T.match_buffer(out_h, (num_tokens, H), OT)
        for t in OUTER(num_tokens):
            lanes = T.alloc_buffer((LANES,), "float32", scope=SCOPE)
            total = T.alloc_buffer((1,), "float32", scope=SCOPE)
            for l in VEC(LANES):
                lanes[l] = T.float32(0)
            for c in range(CHUNKS):
                for l in VEC(LANES):
                    x[t, c * LANES + l] = x[t, c * LANES + l] + T.Cast("float32", y[t, c * LANES + l])
                    lanes[l] = lanes[l] + x[t, c * LANES + l] * x[t, c * LANES + l]
            total[0] = T.float32(0)
            for l in range(TAIL):
                x[t, CHUNKS * LANES + l] = x[t, CHUNKS * LANES + l] + T.Cast("float32", y[t, CHUNKS * LANES + l])
                total[0] = total[0] + x[t, CHUNKS * LANES + l] * x[t, CHUNKS * LANES + l]
            for l in range(LANES):
                total[0] = total[0] + lanes[l]
            inv = T.rsqrt(total[0] / T.float32(H) + T.float32(eps))
            for h in VEC(H):
                out[t, h] = T.Cast(OT, x[t, h] * inv * weight[h])

    return add_rms_norm


def add_rms_norm_config(target, **params) -> dict:
    return {}


def schedule_add_rms_norm(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("add_rms_norm", make_add_rms_norm, add_rms_norm_config, schedule_add_rms_norm,
                  args=("x", "y", "weight", "out"), source_file=__file__, scheduled=True)
