"""The machine a benchmark ran on, and its ceilings measured in the same run.

Every benchmark reports these beside its figures (shared/workloads.md: "Machine ceilings").
"""
from __future__ import annotations

import os

import torch

from catalog.hardware import cpu_model
from planner.hardware_calibration import best_seconds


def describe() -> str:
    """The CPU as a figure must name it: model, instruction set, the level TVM's kernels were built for, and torch's
    own kernels' level."""
    from codegen.target import detect_cpu, host_target

    return (f"{cpu_model()} [{detect_cpu().describe()}], {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()} kernels), {torch.get_num_threads()} threads, "
            f"TVM kernels for {host_target().describe()}")


def copy_bandwidth_gbs(nbytes: int = 1 << 30, repeat: int = 3) -> float:
    """Bytes read + written per second by a large array copy."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * nbytes / best_seconds(lambda: dst.copy_(src), repeat) / 1e9


def read_bandwidth_gbs(nbytes: int, total: int = 1 << 28, repeat: int = 5) -> float:
    """Bytes read per second by a sum over an `nbytes` buffer, warm in whichever cache holds it.

    Small buffers are re-read through a stride-0 view until `total` bytes, so one call's overhead
    does not count; buffers past 4 MiB are summed once per call."""
    buf = torch.ones(max(16, nbytes // 4))
    reps = max(1, total // (4 * buf.numel())) if nbytes <= 4 << 20 else 1
    view = buf.as_strided((reps, buf.numel()), (0, 1))
    return reps * 4 * buf.numel() / best_seconds(view.sum, repeat) / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeat: int = 3) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / best_seconds(lambda: a @ b, repeat) / 1e9


def ceilings() -> dict[str, float]:
    return {
        "copy_gbs": copy_bandwidth_gbs(),
        "read_gbs": read_bandwidth_gbs(1 << 30),  # from DRAM: 32x this CPU's L3
        "fp32_gflops": matmul_gflops(torch.float32),
        "bf16_gflops": matmul_gflops(torch.bfloat16),
    }


def peer_environment(threads: int) -> dict[str, str]:
    """The environment a peer engine runs in: this one with `threads` OpenMP threads, less the OMP_WAIT_POLICY that
    sqlm defaults to PASSIVE for its own pools (catalog/threading_env.py) unless the user set it: a peer keeps its
    own default (llama.cpp's decode runs ~3x slower with sleeping OpenMP workers)."""
    from catalog.threading_env import INHERITED_OMP_WAIT_POLICY

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if INHERITED_OMP_WAIT_POLICY is None:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def publish(text: str, out: str | None) -> None:
    """Print a benchmark's report and, where --out names a file, write it there (BENCHMARKS.md is written from
    those files)."""
    text = text.rstrip("\n") + "\n"
    print(text, end="")
    if out:
        with open(out, "w") as f:
            f.write(text)
