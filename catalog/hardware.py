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

    def __post_init__(self) -> None:
        for name in ("copy_bandwidth", "fp32_flops", "bf16_flops", "op_overhead_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint() -> str:
    return f"{_cpu_model()}|{os.cpu_count()} cores|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first touch of pages, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure() -> HardwareProfile:
    src = torch.empty(16 * 1024 * 1024, dtype=torch.float32).fill_(1.0)  # 64 MiB, past every cache level
    dst = torch.empty_like(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), 5)
    n = 512
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    fp32_s = _best_seconds(lambda: a32 @ b32, 5)
    a16, b16 = a32.to(torch.bfloat16), b32.to(torch.bfloat16)
    bf16_s = _best_seconds(lambda: a16 @ b16, 3)
    tiny = torch.zeros(4)
    op_s = _best_seconds(lambda: [tiny.add(1.0) for _ in range(200)], 3) / 200
    return HardwareProfile(
        copy_bandwidth=2 * src.numel() * 4 / copy_s,
        fp32_flops=2 * n**3 / fp32_s,
        bf16_flops=2 * n**3 / bf16_s,
        op_overhead_s=op_s,
        threads=torch.get_num_threads(),
        description=fingerprint(),
    )


def hardware_profile(catalog: Catalog, recalibrate: bool = False) -> HardwareProfile:
    """The cached profile for this machine, measuring it the first time."""
    key = fingerprint()
    stored = None if recalibrate else catalog.hardware_profile(key)
    if stored is not None:
        return HardwareProfile(**stored)
    profile = measure()
    catalog.put_hardware_profile(key, asdict(profile))
    return profile
