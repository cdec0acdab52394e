"""fp32 matmul against an [N, K] weight (HF layout), scheduled as a GEMV for decode batches.

out[t, n] = sum_k x[t, k] * W[n, k]. K is reduced as (K // 16) chunks of 16 lanes held
in a vector accumulator plus, when K is not a multiple of 16, a scalar tail; the
reduction order per row does not depend on T, so a token's result is the same in any
batch (see shared/notes/determinism.md).
"""
from __future__ import annotations

from codegen.build import KernelSpec
from codegen.kernels import common
from codegen.kernels.common import rfactor_rows, symbolic


def make_dense_matmul(n: int, k: int):
    from tvm import te

    T = symbolic("T")
    x = te.placeholder((T, k), "float32", name="x")
    w = te.placeholder((n, k), "float32", name="weight")
    chunks, tail = divmod(k, 16)
    ko = te.reduce_axis((0, chunks), "ko")
    ki = te.reduce_axis((0, 16), "ki")
    main = te.compute((T, n), lambda t, r: te.sum(x[t, ko * 16 + ki] * w[r, ko * 16 + ki], axis=[ko, ki]),
                      name="main")
    if not tail:
        return te.create_prim_func([x, w, main])
    kt = te.reduce_axis((0, tail), "kt")
    rest = te.compute((T, n), lambda t, r: te.sum(x[t, chunks * 16 + kt] * w[r, chunks * 16 + kt], axis=[kt]),
                      name="rest")
    out = te.compute((T, n), lambda t, r: main[t, r] + rest[t, r], name="out")
    return te.create_prim_func([x, w, out])


def dense_matmul_config(target, n: int, k: int) -> dict:
    return {"rows": 4 if n % 4 == 0 else (2 if n % 2 == 0 else 1), "tail": k % 16 != 0}


def schedule_dense_matmul(sch, cfg: dict) -> None:
    # The scalar tail (K % 16 columns, odd test shapes only) stays a plain loop nest.
    rfactor_rows(sch, "main", cfg["rows"], 16)


SPEC = KernelSpec("dense_matmul", make_dense_matmul, dense_matmul_config, schedule_dense_matmul,
                  args=("x", "weight", "out"), source_file=__file__,
                  depends=(common.__file__,))
