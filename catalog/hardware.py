"""Hardware calibration: the machine ceilings the roofline cost model divides by.

Measured once per machine (cpu model, core count, torch version, thread count) in
about a second, stored in the catalog and reused. The figures are what torch
actually reaches here, not datasheet peaks, so the roofline is already calibrated.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass

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

    def __post_init__(self) -> None:
        for name in ("copy_bandwidth", "fp32_flops", "bf16_flops", "op_overhead_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


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
    return f"{cpu_model()}|{os.cpu_count()} cores|torch {torch.__version__}|{torch.get_num_threads()} threads"


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first touch of pages, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_quant_gemv(rows: int = 1536, cols: int = 576) -> tuple[float, float]:
    """The fused TVM Q4_1 kernel at a decoder-sized matrix: (rate at 1 token, rate at 4 tokens).

    Compiles once into the on-disk kernel cache; (0, 0) where TVM cannot build for this machine.
    """
    try:
        from catalog.quant import quantize
        from codegen.linear import TvmQuantizedLinear

        layer = TvmQuantizedLinear(quantize("Q4_1", torch.randn(rows, cols) * 0.05), gemv_max_tokens=4)
        x1, x4 = torch.randn(1, cols), torch.randn(4, cols)
        t1 = best_seconds(lambda: [layer(x1) for _ in range(20)], 5) / 20
        t4 = best_seconds(lambda: [layer(x4) for _ in range(10)], 5) / 10
    except Exception:  # noqa: BLE001 - any build failure means "TVM is not an option here"
        return 0.0, 0.0
    return rows * cols / t1, 4 * rows * cols / t4


def measure() -> HardwareProfile:
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
    rate_t1, rate_t4 = measure_quant_gemv()
    return HardwareProfile(
        copy_bandwidth=2 * src.numel() * 4 / copy_s,
        fp32_flops=2 * n**3 / fp32_s,
        bf16_flops=2 * n**3 / bf16_s,
        op_overhead_s=op_s,
        threads=torch.get_num_threads(),
        description=fingerprint(),
        quant_gemv_rate_t1=rate_t1,
        quant_gemv_rate_t4=rate_t4,
    )


def hardware_profile(catalog: Catalog, recalibrate: bool = False) -> HardwareProfile:
    """The cached profile for this machine, measuring it the first time."""
    key = fingerprint()
    stored = None if recalibrate else catalog.hardware_profile(key)
    if stored is not None and "quant_gemv_rate_t1" in stored:
        return HardwareProfile(**stored)
    profile = measure()
    catalog.put_hardware_profile(key, asdict(profile))
    return profile
