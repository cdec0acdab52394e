"""RMSNorm, alone or fused with the residual add before it.

    rms_norm:      out = x * rsqrt(mean(x^2) + eps) * weight
    add_rms_norm:  x += y (in place), then out = rms_norm(x)

The decoder adds each sublayer's output into the fp32 residual stream and normalizes the
sum for the next sublayer; fused, the row is read once and written twice instead of three
reads and two writes over two kernels. y is the projection's output (fp32, or bf16 from a
bf16 projection, widened exactly); out is fp32 or bf16 (what the next projection takes,
rounded to nearest even, as torch's cast). One row per step: its sum of squares uses 16
vector lanes folded at the end of the row. Rows run on one thread at decode sizes and are
split over threads from common.PARALLEL_MIN_ROWS.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels import common
from codegen.kernels.common import PARALLEL_MIN_ROWS, loop_kinds
from codegen.target import Target

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
LANES = 16


def _make(hidden: int, eps: float, y_dtype: str | None, out_dtype: str, gpu: bool):
    """y_dtype None: plain RMSNorm, (x, weight, out); else the fused add, (x, y, weight, out)."""
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu, cpu_threads=False)
    SCOPE = "local" if gpu else "global"
    H, ADD = hidden, y_dtype is not None
    CHUNKS, TAIL = divmod(H, LANES)
    YT, OT = DTYPES[y_dtype or "fp32"], DTYPES[out_dtype]

    @T.macro
    def row(x, y, weight, out, t):
        lanes = T.alloc_buffer((LANES,), "float32", scope=SCOPE)
        total = T.alloc_buffer((1,), "float32", scope=SCOPE)
        for l in VEC(LANES):
            lanes[l] = T.float32(0)
        for c in range(CHUNKS):
            for l in VEC(LANES):
                if ADD:
                    x[t, c * LANES + l] = x[t, c * LANES + l] + T.Cast("float32", y[t, c * LANES + l])
                lanes[l] = lanes[l] + x[t, c * LANES + l] * x[t, c * LANES + l]
        total[0] = T.float32(0)
        for l in range(TAIL):
            if ADD:
                x[t, CHUNKS * LANES + l] = x[t, CHUNKS * LANES + l] + T.Cast("float32", y[t, CHUNKS * LANES + l])
            total[0] = total[0] + x[t, CHUNKS * LANES + l] * x[t, CHUNKS * LANES + l]
        for l in range(LANES):
            total[0] = total[0] + lanes[l]
        inv = T.rsqrt(total[0] / T.float32(H) + T.float32(eps))
        for h in VEC(H):
            out[t, h] = T.Cast(OT, x[t, h] * inv * weight[h])

    @T.macro
    def rows(x, y, weight, out, num_tokens):
        if gpu:
            for t in OUTER(num_tokens):
                row(x, y, weight, out, t)
        elif num_tokens >= PARALLEL_MIN_ROWS:
            for t in T.parallel(num_tokens):
                row(x, y, weight, out, t)
        else:
            for t in T.serial(num_tokens):
                row(x, y, weight, out, t)

    if ADD:
        @T.prim_func
        def add_rms_norm(x_h: T.handle, y_h: T.handle, w_h: T.handle, out_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            num_tokens = T.int64()
            x = T.match_buffer(x_h, (num_tokens, H), "float32")
            y = T.match_buffer(y_h, (num_tokens, H), YT)
            weight = T.match_buffer(w_h, (H,), "float32")
            out = T.match_buffer(out_h, (num_tokens, H), OT)
            rows(x, y, weight, out, num_tokens)

        return add_rms_norm

    @T.prim_func
    def rms_norm(x_h: T.handle, w_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        x = T.match_buffer(x_h, (num_tokens, H), "float32")
        weight = T.match_buffer(w_h, (H,), "float32")
        out = T.match_buffer(out_h, (num_tokens, H), OT)
        rows(x, x, weight, out, num_tokens)

    return rms_norm


def make_rms_norm(hidden: int, eps: float, out_dtype: str = "fp32", *, target: Target):
    return _make(hidden, eps, None, out_dtype, target.is_gpu)


def make_add_rms_norm(hidden: int, eps: float, y_dtype: str = "fp32", out_dtype: str = "fp32", *, target: Target):
    return _make(hidden, eps, y_dtype, out_dtype, target.is_gpu)


def norm_config(target, **params) -> dict:
    return {}


def schedule_norm(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


RMS_NORM = KernelSpec("rms_norm", make_rms_norm, norm_config, schedule_norm, args=("x", "weight", "out"),
                      source_file=__file__, scheduled=True, depends=(common.__file__,))
SPEC = KernelSpec("add_rms_norm", make_add_rms_norm, norm_config, schedule_norm,
                  args=("x", "y", "weight", "out"), source_file=__file__, scheduled=True,
                  depends=(common.__file__,))
