"""Hardware calibration: the machine ceilings the roofline cost model divides by.

Measured once per machine (cpu model, core count, torch version, thread count) in
about a second, stored in the catalog and reused. The figures are what torch
actually reaches here, not datasheet peaks, so the roofline is already calibrated.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, fields

import torch

from catalog.store import Catalog


@dataclass(frozen=True)
class HardwareProfile:
    copy_bandwidth: float  # bytes/s, bytes read + written by a large tensor copy
    fp32_flops: float  # FLOP/s of a square fp32 matmul
    bf16_flops: float  # FLOP/s of a square bf16 matmul
    op_overhead_s: float  # seconds of one tiny torch op: the floor under every kernel launch
    threads: int
    description: str
    # weights x tokens per second of the fused TVM Q4_1 GEMV at 1 and 4 tokens; 0 when TVM is unavailable
    quant_gemv_rate_t1: float = 0.0
    quant_gemv_rate_t4: float = 0.0
    # the fused TVM Q4_1 GEMM (above the GEMV crossover): seconds = weights / unpack rate (once per
    # call) + weights x tokens / rate, fitted at 8 and 64 tokens; 0 when not measured
    quant_gemm_unpack_rate: float = 0.0
    quant_gemm_rate: float = 0.0
    # the bf16 prefill path (prefill_dtype='bf16', from the crossover's bf16_min_tokens): seconds = weights /
    # dequant rate (TVM unpacks Q4_1 into a bf16 W^T once per call) + weights x tokens / rate (torch's bf16
    # GEMM on it, AMX where the CPU has it); 0 when not measured
    quant_dequant_bf16_rate: float = 0.0
    quant_bf16_gemm_rate: float = 0.0
    # achieved FLOP/s of the engine's attention backends (runtime/attention_timing.py), decode and
    # prefill; 0 where a backend cannot run here (the cost model then prices it by the roofline)
    attention_tvm_decode_flops: float = 0.0
    attention_tvm_prefill_flops: float = 0.0
    attention_torch_decode_flops: float = 0.0
    attention_torch_prefill_flops: float = 0.0

    def __post_init__(self) -> None:
        for name in ("copy_bandwidth", "fp32_flops", "bf16_flops", "op_overhead_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


_FIELDS = frozenset(f.name for f in fields(HardwareProfile))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint() -> str:
    """The machine as calibration sees it; a forced kernel level (SQLM_CPU_TARGET) is another machine."""
    level = os.environ.get("SQLM_CPU_TARGET", "").strip() or "native"
    return (f"{cpu_model()}|{os.cpu_count()} cores|torch {torch.__version__}|{torch.get_num_threads()} threads"
            f"|kernels {level}")


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
        from catalog.quant import quantize
        from codegen.build import get_kernel
        from codegen.packed import pack

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
    except Exception:  # noqa: BLE001 - any build failure means "TVM is not an option here"
        return {"quant_gemv_rate_t1": 0.0, "quant_gemv_rate_t4": 0.0, "quant_gemm_unpack_rate": 0.0,
                "quant_gemm_rate": 0.0, "quant_dequant_bf16_rate": 0.0, "quant_bf16_gemm_rate": 0.0}
    weights = rows * cols
    per_token = max((t64 - t8) / 56, 1e-12)
    unpack = max(t8 - 8 * per_token, 1e-12)  # noise can push the fitted intercept to zero
    return {"quant_gemv_rate_t1": weights / t1, "quant_gemv_rate_t4": 4 * weights / t4,
            "quant_gemm_unpack_rate": weights / unpack, "quant_gemm_rate": weights / per_token,
            **measure_bf16_prefill(rows, cols)}


def measure_bf16_prefill(rows: int = 1536, cols: int = 576, copies: int = 8, tokens: int = 128) -> dict[str, float]:
    """codegen.linear.TvmQuantizedLinear's 'dequant_bf16' path on a Q4_1 matrix, as the rates above.

    The dequantize is timed alone (it is the part paid once per call, like the fused GEMM's unpack);
    the GEMM's rate is what the whole path adds over it at `tokens` rows (the x and output conversions
    included). `copies` layers keep the blocks out of L2 as in the GEMM's timing. Zero where the
    dequantize kernel cannot build here.
    """
    try:
        from catalog.quant import quantize
        from codegen.linear import TvmQuantizedLinear

        weight = quantize("Q4_1", torch.randn(rows, cols) * 0.05)
        layers = [TvmQuantizedLinear(weight, prefill_dtype="bf16") for _ in range(copies)]  # each packs its own copy
        x = torch.randn(tokens, cols)
        dequant = best_seconds(lambda: [layer.dequantized_t() for layer in layers], 5) / copies
        path = best_seconds(lambda: [layer.run("dequant_bf16", x) for layer in layers], 5) / copies
    except Exception:  # noqa: BLE001 - a build failure means "the bf16 path is not priced from measurement"
        return {"quant_dequant_bf16_rate": 0.0, "quant_bf16_gemm_rate": 0.0}
    weights = rows * cols
    per_token = max((path - dequant) / tokens, 1e-12)
    return {"quant_dequant_bf16_rate": weights / dequant, "quant_bf16_gemm_rate": weights / per_token}


def measure() -> HardwareProfile:
    from runtime.attention_timing import measure_attention  # times the runtime's own attention backends

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
    return HardwareProfile(
        copy_bandwidth=2 * src.numel() * 4 / copy_s,
        fp32_flops=2 * n**3 / fp32_s,
        bf16_flops=2 * n**3 / bf16_s,
        op_overhead_s=op_s,
        threads=torch.get_num_threads(),
        description=fingerprint(),
        **measure_quant_kernels(),
        **measure_attention(),
    )


def hardware_profile(catalog: Catalog, recalibrate: bool = False) -> HardwareProfile:
    """The cached profile for this machine, measuring it the first time."""
    key = fingerprint()
    stored = None if recalibrate else catalog.hardware_profile(key)
    # a profile stored before a figure was added to HardwareProfile (the GEMM, the attention timings, the
    # bf16 prefill path, ...) is re-measured: a missing figure would read as "cannot run here"
    if stored is not None and set(stored) >= _FIELDS:
        return HardwareProfile(**{k: v for k, v in stored.items() if k in _FIELDS})
    profile = measure()
    catalog.put_hardware_profile(key, asdict(profile))
    return profile
