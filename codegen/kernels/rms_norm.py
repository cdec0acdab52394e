"""RMSNorm, fused: out = x * rsqrt(mean(x^2) + eps) * weight, one pass per token row.

x is the fp32 residual stream; out_dtype 'bf16' writes the normalized row straight in the
dtype a bf16 linear consumes (rounded to nearest even, as torch's cast), saving a cast pass.
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels.common import symbolic, vectorize_inner


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def make_rms_norm(hidden: int, eps: float, out_dtype: str = "fp32"):
    from tvm import te, tirx

    T = symbolic("T")
    x = te.placeholder((T, hidden), "float32", name="x")
    w = te.placeholder((hidden,), "float32", name="weight")
    lanes = 16 if hidden % 16 == 0 else 1
    ko = te.reduce_axis((0, hidden // lanes), "ko")
    ki = te.reduce_axis((0, lanes), "ki")
    sq = te.compute((T,), lambda t: te.sum(x[t, ko * lanes + ki] * x[t, ko * lanes + ki], axis=[ko, ki]),
                    name="sum_sq")
    inv = te.compute((T,), lambda t: tirx.rsqrt(sq[t] / tirx.const(hidden, "float32") + tirx.const(eps, "float32")),
                     name="inv_rms")
    out = te.compute((T, hidden), lambda t, h: (x[t, h] * inv[t] * w[h]).astype(DTYPES[out_dtype]), name="out")
    return te.create_prim_func([x, w, out])


def rms_norm_config(target, hidden: int, eps: float, out_dtype: str = "fp32") -> dict:
    return {"lanes": 16 if hidden % 16 == 0 else 1}


def schedule_rms_norm(sch, cfg: dict) -> None:
    # The sum of squares stays a root-level stage (T x hidden reads, cheap); its 16
    # lanes become a vector accumulator. Rows run one after another: waking threads
    # costs more than a row (see common.loop_kinds).
    if cfg["lanes"] > 1:
        rf = sch.rfactor(sch.get_loops(sch.get_sblock("sum_sq"))[-1], 1)
        t, ko, ki = sch.get_loops(rf)
        sch.vectorize(ki)
        sch.decompose_reduction(rf, ko)
    vectorize_inner(sch, "out", 16)


SPEC = KernelSpec("rms_norm", make_rms_norm, rms_norm_config, schedule_rms_norm,
                  args=("x", "weight", "out"), source_file=__file__)
