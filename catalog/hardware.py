"""The hardware profile: the machine ceilings the roofline cost model divides by, kept per machine.

A profile belongs to the machine, not to a catalog: it is stored once under the user's cache
directory (`machine_cache_dir()`), keyed by `fingerprint()` (CPU model, core count, torch version,
thread count, kernel level), and every catalog on the machine reads it. Its figures are measured
by planner.hardware_calibration in two parts, each when first needed: the ceilings (copy
bandwidth, matmul FLOP/s, op overhead: a fraction of a second) for any plan, the kernel rates
(TVM's quantized kernels, the attention backends: seconds, compiling included) only for plans
that call a model.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch


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
    # the most rows at which the GEMV is still no slower than the GEMM (timed on a grid of row counts; where the
    # CPU's integer dot products outrun its fp32 FMAs, e.g. AVX-512 VNNI on Zen 4, that is every size timed);
    # 0 when not measured (codegen.quant_crossover.CROSSOVER's then)
    quant_gemv_max_tokens: int = 0
    # weights x tokens per second each GEMV row past the 4th adds (its weight blocks already in L1), from 4 and 64
    # rows; 0 when not measured (rows are then priced at the 4-row rate)
    quant_gemv_batch_rate: float = 0.0
    # weights x tokens per second of the greedy screen's kernel (codegen.greedy_screen: one int8 piece and a bound)
    # at 64 rows; 0 when not measured (greedy lm_heads are then priced as the GEMV)
    quant_screen_rate: float = 0.0
    # the bf16 prefill path (prefill_dtype='bf16', from the crossover's bf16_min_tokens): seconds = weights /
    # dequant rate (TVM unpacks Q4_1 into a bf16 W^T once per call) + weights x tokens / rate (torch's bf16
    # GEMM on it, AMX where the CPU has it); 0 when not measured
    quant_dequant_bf16_rate: float = 0.0
    quant_bf16_gemm_rate: float = 0.0
    # FLOP/s of codegen's bf16 matmul (bf16 weights on TVM kernels) at 64 rows, its weights streamed from L3/DRAM;
    # 0 when not measured or where torch's bf16 GEMM was timed much faster (bf16 weights then multiply in torch,
    # priced at bf16_torch_linear_flops)
    bf16_matmul_flops: float = 0.0
    # FLOP/s of torch's bf16 linear at that shape, timed beside it (bf16 weights on torch kernels: a square GEMM's
    # bf16_flops overstates it at 64 rows); 0 when not measured (bf16_flops then)
    bf16_torch_linear_flops: float = 0.0
    # achieved FLOP/s of the engine's attention backends (runtime/attention_timing.py), decode and
    # prefill; 0 where a backend cannot run here (the cost model then prices it by the roofline)
    attention_tvm_decode_flops: float = 0.0
    attention_tvm_prefill_flops: float = 0.0
    attention_torch_decode_flops: float = 0.0
    attention_torch_prefill_flops: float = 0.0
    # bytes/s a KV block comes back into the pool at from the host tier (decompress) and the disk tier (read,
    # verify: from the page cache), runtime/kv_tiers.py; 0 when not measured
    kv_host_restore_rate: float = 0.0
    kv_disk_restore_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("copy_bandwidth", "fp32_flops", "bf16_flops", "op_overhead_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


_FIELDS = frozenset(f.name for f in fields(HardwareProfile))
# The parts measured separately: ceilings for any plan; kernel rates and KV tier rates for plans with model calls.
CEILINGS = ("copy_bandwidth", "fp32_flops", "bf16_flops", "op_overhead_s", "threads", "description")
TIER_RATES = ("kv_host_restore_rate", "kv_disk_restore_rate")
KERNEL_RATES = tuple(f.name for f in fields(HardwareProfile) if f.name not in CEILINGS + TIER_RATES)


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


def machine_cache_dir() -> Path:
    """Where per-machine figures live: $SQLM_CACHE_DIR, else $XDG_CACHE_HOME/sqlm, else ~/.cache/sqlm."""
    explicit = os.environ.get("SQLM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sqlm"


def _profiles_path() -> Path:
    return machine_cache_dir() / "hardware_profiles.json"


def _read_all() -> dict:
    try:
        data = json.loads(_profiles_path().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or a file this version cannot read: measured again
    return data if isinstance(data, dict) else {}


def stored_part(part: tuple[str, ...], key: str | None = None, stamp: dict | None = None) -> dict | None:
    """The stored figures of one part (CEILINGS or KERNEL_RATES) for this machine; None unless all are there
    (a profile stored before a figure was added would read the missing one as "cannot run here") and the entry
    holds `stamp`'s values (what the figures were measured with, e.g. the kernels' code: store_part them alongside)."""
    entry = _read_all().get(key or fingerprint(), {})
    if not isinstance(entry, dict) or not set(part) <= set(entry):
        return None
    if any(entry.get(name) != value for name, value in (stamp or {}).items()):
        return None
    return {name: entry[name] for name in part}


def store_part(figures: dict, key: str | None = None) -> None:
    """Merge `figures` into this machine's stored profile."""
    data = _read_all()
    key = key or fingerprint()
    data[key] = {**data.get(key, {}), **figures}
    _write_all(data)


def _write_all(data: dict) -> None:
    """Written to a temporary file, synced and renamed: concurrent writers never leave a torn file (the
    last one wins, each with whole measurements)."""
    path = _profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
