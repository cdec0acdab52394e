"""bf16 matmul against a bf16 weight packed in pairs, for `weight_format = 'bf16'` models.

out[t, n] = sum_k x[t, k] * W[n, k], x [T, K] bf16, out [T, N] bf16 (fp32 sums rounded once, as torch's
bf16 linear) or fp32, W in `pack`'s layout:

    w[b, p, 32 u + 2 l + j] = W[16 (b V + u) + l, 2 p + j]      (rows past N: zero)

so one 64-byte vector holds the pair p of 16 rows, the operand of one bf16 pair dot product
(codegen.kernels.bf16_dot: AVX512-BF16's vdpbf16ps), and a block b of V vectors is one contiguous
panel. A register tile of V vectors x TOKENS tokens (`tiles`: 4 x 4 with 32 registers) loads each
weight vector once for its tokens and broadcasts each x pair from memory; tokens past a multiple
of TOKENS run one at a time, through the same instructions in the same order, so a token's result
does not depend on its batch. (block, token group) tasks are spread over the threads, a block's
groups next to each other so its panel is read from memory once and then from L2.

Zen 4, 2 threads, 64 tokens x 576 -> 3072: 424 GFLOP/s against torch's oneDNN bf16 linear at
180-290. CPUs with AMX keep torch's GEMM (codegen.model_kernels).
"""
from __future__ import annotations

import torch

from codegen.build import KernelSpec
from codegen.kernels import bf16_dot, common, quant_common
from codegen.kernels.common import loop_kinds
from codegen.kernels.quant_common import PARALLEL_MIN_WORK
from codegen.target import Target

ROWS = 16  # rows per weight vector: the fp32 lanes of one AVX-512 dot product
OUT_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def tiles(target: Target) -> tuple[int, int]:
    """(weight vectors V, tokens) of the register tile: as large as half the registers hold in accumulators."""
    if target.is_gpu:
        return 1, 1
    per_vector = ROWS // target.vector_lanes
    for vectors in (4, 2, 1):
        if vectors * vectors * per_vector <= target.vector_registers // 2:
            return vectors, vectors
    return 1, 1


def blocks(n: int, vectors: int) -> int:
    return -(-n // (ROWS * vectors))


def pack(weight: torch.Tensor, vectors: int) -> torch.Tensor:
    """bf16 W [N, K] (K even) -> uint16 [blocks, K / 2, 32 vectors] in the kernel's layout."""
    n, k = weight.shape
    if k % 2:
        raise ValueError(f"the bf16 matmul needs an even number of columns, got {k}")
    rows = blocks(n, vectors) * ROWS * vectors
    padded = torch.zeros(rows, k, dtype=torch.bfloat16)
    padded[:n] = weight
    panels = padded.view(rows // (ROWS * vectors), ROWS * vectors, k // 2, 2).permute(0, 2, 1, 3)
    return panels.contiguous().view(torch.uint16).view(rows // (ROWS * vectors), k // 2, 2 * ROWS * vectors)


def make_bf16_matmul(n: int, k: int, out_dtype: str = "bf16", *, target: Target):
    from tvm.script import tirx as T

    if k % 2:
        raise ValueError(f"the bf16 matmul needs an even number of columns, got {k}")
    V, TOKENS = tiles(target)
    BLOCKS, PAIRS, OUT = blocks(n, V), k // 2, OUT_DTYPES[out_dtype]
    LANES = ROWS if not target.is_gpu else 1
    gpu = target.is_gpu
    OUTER, _ = loop_kinds(gpu)

    def x_pair(x, t, p):
        return T.reinterpret("int32", x.vload([t, 2 * p], "uint16x2"))

    @T.macro
    def tile(x, w, out, b, t0, TB):
        """Tokens t0 .. t0 + TB - 1 against block b: acc[token, vector] over every pair, then stored."""
        acc = T.alloc_buffer((TB, V, ROWS), "float32")
        for tb in T.unroll(TB):
            for u in T.unroll(V):
                acc[tb, u, T.ramp(0, 1, ROWS)] = T.Broadcast(T.float32(0), ROWS)
        for p in range(PAIRS):
            for u in T.unroll(V):
                for tb in T.unroll(TB):
                    acc[tb, u, T.ramp(0, 1, ROWS)] = bf16_dot.dot(
                        target, acc[tb, u, T.ramp(0, 1, ROWS)], w[b, p, T.ramp(2 * ROWS * u, 1, 2 * ROWS)],
                        x_pair(x, t0 + tb, p))
        for tb in T.unroll(TB):
            for u in T.unroll(V):
                if (b * V + u) * ROWS + ROWS <= n:
                    for l in T.vectorized(ROWS):
                        out[t0 + tb, (b * V + u) * ROWS + l] = T.Cast(OUT, acc[tb, u, l])
                else:
                    for l in range(ROWS):
                        if (b * V + u) * ROWS + l < n:
                            out[t0 + tb, (b * V + u) * ROWS + l] = T.Cast(OUT, acc[tb, u, l])

    @T.macro
    def task(x, w, out, b, group, full):
        if group < full:
            tile(x, w, out, b, group * TOKENS, TOKENS)
        else:
            tile(x, w, out, b, full * TOKENS + group - full, 1)

    @T.macro
    def cpu_body(x, w, out, num_tokens):
        full = num_tokens // TOKENS
        groups = full + num_tokens % TOKENS
        if num_tokens * (BLOCKS * V * ROWS * k) >= PARALLEL_MIN_WORK:
            for i in T.parallel(BLOCKS * groups):
                task(x, w, out, i // groups, i % groups, full)
        else:
            for i in range(BLOCKS * groups):
                task(x, w, out, i // groups, i % groups, full)

    @T.macro
    def gpu_body(x, w, out, num_tokens):
        """One block per weight block, one thread per row, a scalar sum per token."""
        for b in OUTER(BLOCKS):
            for r in T.thread_binding(ROWS, thread="threadIdx.x"):
                for t in range(num_tokens):
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    acc[0] = T.float32(0)
                    for p in range(PAIRS):
                        acc[0] = bf16_dot.dot(target, acc[0], w.vload([b, p, 2 * r], "uint16x2"), x_pair(x, t, p),
                                              lanes=1)
                    if b * ROWS + r < n:
                        out[t, b * ROWS + r] = T.Cast(OUT, acc[0])

    LLVM = bf16_dot.llvm_import(target)

    @T.prim_func
    def bf16_matmul(x_h: T.handle, w_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        x = T.match_buffer(x_h, (num_tokens, k), "bfloat16")
        w = T.match_buffer(w_h, (BLOCKS, PAIRS, 2 * ROWS * V), "uint16")
        out = T.match_buffer(out_h, (num_tokens, n), OUT)
        xu = T.decl_buffer((num_tokens, k), "uint16", data=x.data)  # the bits, for the dot product
        if gpu:
            gpu_body(xu, w, out, num_tokens)
        elif LLVM is not None:
            with T.attr(0, "pragma_import_llvm", LLVM):
                cpu_body(xu, w, out, num_tokens)
        else:
            cpu_body(xu, w, out, num_tokens)

    return bf16_matmul


def bf16_matmul_config(target, n: int, k: int, out_dtype: str = "bf16") -> dict:
    return {}


def schedule_bf16_matmul(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("bf16_matmul", make_bf16_matmul, bf16_matmul_config, schedule_bf16_matmul,
                  args=("x", "w (pack's layout)", "out"), source_file=__file__, scheduled=True,
                  depends=(common.__file__, quant_common.__file__, bf16_dot.__file__))
