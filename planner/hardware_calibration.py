"""Measuring this machine for the cost model (catalog.hardware stores what is measured here).

The ceilings are torch's own rates; the kernel rates time codegen's TVM kernels and the runtime's
attention backends exactly as the engine calls them, so a fresh machine prices TVM from measurement
and the optimizer can choose it. `sqlm calibrate` measures again.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

from catalog.hardware import (CEILINGS, KERNEL_RATES, TIER_RATES, HardwareProfile, fingerprint, machine_cache_dir,
                              store_part, stored_part)
from catalog.quant import quantize
from codegen.build import get_kernel
from codegen.cache import source_digest
from codegen.linear import TvmBf16Linear, TvmQuantizedLinear
from codegen.packed import pack
from codegen.quant_crossover import GEMV_CROSSOVER_GRID, TORCH_BF16_MARGIN
from operators.linear import DenseLinear
from runtime.attention_timing import measure_attention
from runtime.kv_tiers import measure_restore_rates


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first touch of pages, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_quant_kernels(rows: int = 1536, cols: int = 576, ring_bytes: int = 64 << 20) -> dict[str, float]:
    """The fused TVM Q4_1 kernels at a decoder-sized matrix, as the HardwareProfile rates above.

    Decode reads every layer's weights once per step, from L3 or DRAM rather than L2, so each
    rate is timed over a ring of copies of the weight (`ring_bytes`, about SmolLM2's 66 MB of
    decoder linears). Compiles once into the on-disk kernel cache; all zero where TVM cannot
    build for this machine.
    """
    try:
        packed = pack(quantize("Q4_1", torch.randn(rows, cols) * 0.05))
        ring = [tuple(t.clone() for t in packed.tensors) for _ in range(max(1, ring_bytes // packed.nbytes))]
        shape = {"qtype": "Q4_1", "n": rows, "k": cols}
        gemv, gemm = get_kernel("quant_gemv", shape), get_kernel("quant_gemm", shape)

        def seconds(kernel, tokens: int, weights: list, repeats: int) -> float:
            x, out = torch.randn(tokens, cols), torch.empty(tokens, rows)
            return best_seconds(lambda: [kernel(x, *weight, out) for weight in weights], repeats) / len(weights)

        t1, t4 = seconds(gemv, 1, ring, 5), seconds(gemv, 4, ring, 3)
        # the GEMM does >= 8 FMAs per weight it reads: a few copies keep it out of L2 long enough
        t8, t64 = seconds(gemm, 8, ring[:8], 3), seconds(gemm, 64, ring[:8], 3)
        gemv_max_tokens = gemv_crossover(lambda kernel, tokens: seconds(kernel, tokens, ring[:8], 3), gemv, gemm)
        g4, g64 = seconds(gemv, 4, ring[:8], 3), seconds(gemv, 64, ring[:8], 3)
        screen = get_kernel("quant_gemv", {**shape, "screen": True})
        tiles = packed.tensors[0].shape[0]
        row_norm, tile_max = torch.zeros(tiles, 16), torch.empty(64, tiles)
        x, out = torch.randn(64, cols), torch.empty(64, rows)
        s64 = best_seconds(lambda: [screen(x, *weight, row_norm, out, tile_max) for weight in ring[:8]], 3) / 8
    except Exception:  # noqa: BLE001 - any build failure means "TVM is not an option here"
        return {"quant_gemv_rate_t1": 0.0, "quant_gemv_rate_t4": 0.0, "quant_gemm_unpack_rate": 0.0,
                "quant_gemm_rate": 0.0, "quant_gemv_max_tokens": 0, "quant_gemv_batch_rate": 0.0,
                "quant_screen_rate": 0.0, "quant_dequant_bf16_rate": 0.0,
                "quant_bf16_gemm_rate": 0.0}
    weights = rows * cols
    # noise (a busy neighbour) can make t64 no slower than t8: the fit then says nothing, so price each token
    # at its share of t64, an upper bound, rather than at a near-zero slope
    per_token = (t64 - t8) / 56 if t64 > 1.1 * t8 else t64 / 64
    unpack = max(t8 - 8 * per_token, 1e-12)  # noise can push the fitted intercept to zero
    return {"quant_gemv_rate_t1": weights / t1, "quant_gemv_rate_t4": 4 * weights / t4,
            "quant_gemm_unpack_rate": weights / unpack, "quant_gemm_rate": weights / per_token,
            "quant_gemv_max_tokens": gemv_max_tokens, "quant_gemv_batch_rate": 60 * weights / max(g64 - g4, 1e-12),
            "quant_screen_rate": 64 * weights / s64}


def gemv_crossover(seconds, gemv, gemm) -> int:
    """The largest row count of GEMV_CROSSOVER_GRID up to which the GEMV is no slower than the GEMM at every
    count timed (`seconds(kernel, tokens)`); the grid's first where it loses already there."""
    best = GEMV_CROSSOVER_GRID[0]
    for tokens in GEMV_CROSSOVER_GRID:
        if seconds(gemv, tokens) > seconds(gemm, tokens):
            break
        best = tokens
    return best


def measure_bf16_prefill(rows: int = 1536, cols: int = 576, copies: int = 8, tokens: int = 128,
                         bf16_torch: bool = False) -> dict[str, float]:
    """codegen.linear.TvmQuantizedLinear's 'dequant_bf16' path on a Q4_1 matrix, as the rates above.

    The dequantize is timed alone (it is the part paid once per call, like the fused GEMM's unpack);
    the GEMM's rate is what the whole path adds over it at `tokens` rows (the x and output conversions
    included). `copies` layers keep the blocks out of L2 as in the GEMM's timing. Zero where the
    dequantize kernel cannot build here.
    """
    try:
        weight = quantize("Q4_1", torch.randn(rows, cols) * 0.05)
        layers = [TvmQuantizedLinear(weight, prefill_dtype="bf16", bf16_torch=bf16_torch)
                  for _ in range(copies)]  # each packs its own copy
        x = torch.randn(tokens, cols)
        dequant = best_seconds(lambda: [layer.dequantized() for layer in layers], 5) / copies
        path = best_seconds(lambda: [layer.run("dequant_bf16", x) for layer in layers], 5) / copies
    except Exception:  # noqa: BLE001 - a build failure means "the bf16 path is not priced from measurement"
        return {"quant_dequant_bf16_rate": 0.0, "quant_bf16_gemm_rate": 0.0}
    weights = rows * cols
    per_token = path - dequant if path > 1.1 * dequant else path  # see measure_quant_kernels
    per_token /= tokens
    return {"quant_dequant_bf16_rate": weights / dequant, "quant_bf16_gemm_rate": weights / per_token}


def measure_bf16_matmul(rows: int = 1536, cols: int = 576, tokens: int = 64, ring_bytes: int = 64 << 20) -> dict:
    """codegen.linear.TvmBf16Linear's kernel at a decoder-sized matrix and a W1-sized batch, against torch's bf16
    linear on the same weights (over a ring of copies, as measure_quant_kernels): its FLOP/s, or 0 where torch's is
    TORCH_BF16_MARGIN faster (bf16 weights then multiply in torch: codegen.quant_crossover.bf16_on_torch) or the
    kernel cannot build here; and torch's FLOP/s, which prices bf16 weights on torch kernels."""
    weights = [torch.randn(rows, cols).to(torch.bfloat16) for _ in range(max(1, ring_bytes // (2 * rows * cols)))]
    x = torch.randn(tokens, cols).to(torch.bfloat16)
    torchs = [DenseLinear(w) for w in weights]
    torch_s = best_seconds(lambda: [layer(x) for layer in torchs], 3) / len(torchs)
    del torchs
    try:
        ours = [TvmBf16Linear(w) for w in weights]
        tvm_s = best_seconds(lambda: [layer(x) for layer in ours], 3) / len(ours)
    except Exception:  # noqa: BLE001 - a build failure means "not on TVM here"
        tvm_s = float("inf")
    flops = 2 * rows * cols * tokens
    return {"bf16_matmul_flops": 0.0 if TORCH_BF16_MARGIN * torch_s < tvm_s else flops / tvm_s,
            "bf16_torch_linear_flops": flops / torch_s}


def measure_ceilings() -> dict:
    """Copy bandwidth, matmul FLOP/s and the floor under every op: a fraction of a second."""
    src = torch.empty(16 * 1024 * 1024, dtype=torch.float32).fill_(1.0)  # 64 MiB, past every cache level
    dst = torch.empty_like(src)
    copy_s = best_seconds(lambda: dst.copy_(src), 5)
    n = 512
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    fp32_s = best_seconds(lambda: a32 @ b32, 5)
    a16, b16 = a32.to(torch.bfloat16), b32.to(torch.bfloat16)
    bf16_s = best_seconds(lambda: a16 @ b16, 3)
    tiny = torch.zeros(4)
    op_s = best_seconds(lambda: [tiny.add(1.0) for _ in range(200)], 3) / 200
    return {"copy_bandwidth": 2 * src.numel() * 4 / copy_s, "fp32_flops": 2 * n**3 / fp32_s,
            "bf16_flops": 2 * n**3 / bf16_s, "op_overhead_s": op_s, "threads": torch.get_num_threads(),
            "description": fingerprint()}


def measure_kernel_rates() -> dict:
    """TVM's quantized kernels and both attention backends, compiling what is not in the kernel cache."""
    bf16 = measure_bf16_matmul()  # where bf16 multiplies decides what the bf16 prefill path runs
    return {**measure_quant_kernels(), **bf16, **measure_bf16_prefill(bf16_torch=bf16["bf16_matmul_flops"] <= 0),
            **measure_attention()}


def measure_tier_rates() -> dict:
    """How fast KV blocks come back from the host and disk tiers (a few milliseconds)."""
    return measure_restore_rates(machine_cache_dir())


@functools.cache
def kernel_code_stamp() -> dict[str, str]:
    """What the kernel rates were measured with: a digest of codegen's sources, the attention backends' and this
    file's. A stored profile whose stamp differs timed other kernels (an edit, a new sqlm) and is measured again."""
    root = Path(__file__).resolve().parents[1]
    sources = sorted(str(p) for p in (root / "codegen").rglob("*.py"))
    sources += sorted(str(p) for p in (root / "runtime").glob("attention*.py"))
    return {"kernel_code": source_digest(*sources, __file__)}


def hardware_profile(with_kernels: bool = True, recalibrate: bool = False) -> HardwareProfile:
    """This machine's profile: each part read from the per-machine store, or measured now and stored.
    Without `with_kernels` (plans that call no model) the kernel and KV tier rates are left at 0 and not measured."""
    parts = {CEILINGS: (measure_ceilings, {}), KERNEL_RATES: (measure_kernel_rates, kernel_code_stamp()),
             TIER_RATES: (measure_tier_rates, {})}
    figures = {}
    for part, (measure, stamp) in parts.items():
        if part is not CEILINGS and not with_kernels:
            continue
        stored = None if recalibrate else stored_part(part, stamp=stamp)
        if stored is None:
            stored = measure()
            store_part({**stored, **stamp})
        figures.update(stored)
    return HardwareProfile(**figures)
