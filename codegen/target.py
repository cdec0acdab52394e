"""Which machine the kernels are compiled for.

A `Target` is a plain frozen value: the instruction set (LLVM triple, cpu name and the
features the kernels may use) or a CUDA arch. Its `key` enters the on-disk kernel cache
key, so a kernel built for one CPU is never loaded on a CPU that lacks its instructions,
and `tvm_target()` builds the TVM object (`-mtriple/-mcpu/-mattr`) only when something is
compiled. Kernels read the features and pick their per-target intrinsics from them.

`LEVELS` names the CPU levels every kernel is built for (x86-64-v3 with AVX2 and FMA,
AVX-512, AVX-512 with VNNI, Sapphire Rapids, aarch64 with NEON, with the dot-product
extension). `detect_cpu()` reads the host; `host_target()` is the target kernels are built
for by default: the host, or the level named by `SQLM_CPU_TARGET` (to reproduce another
machine's code path on a bigger one; refused when the host cannot run it).
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, replace

# The features kernels may use, in /proc/cpuinfo's spelling, with their LLVM attribute.
LLVM_ATTRS = {
    "avx2": "+avx2", "fma": "+fma", "f16c": "+f16c", "avx512f": "+avx512f", "avx512bw": "+avx512bw",
    "avx512vl": "+avx512vl", "avx512_bf16": "+avx512bf16", "avx512_vnni": "+avx512vnni",
    "avx512_fp16": "+avx512fp16", "amx_tile": "+amx-tile", "amx_bf16": "+amx-bf16", "amx_int8": "+amx-int8",
    "neon": "+neon", "dotprod": "+dotprod",
}
CPU_FEATURES = tuple(LLVM_ATTRS)
# aarch64's /proc/cpuinfo names NEON and the dot-product extension differently
AARCH64_FLAGS = {"asimd": "neon", "asimddp": "dotprod"}
TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class Target:
    kind: str  # 'llvm' | 'cuda'
    mcpu: str = ""  # LLVM cpu name, or the CUDA arch
    features: tuple[str, ...] = ()
    num_cores: int = 1
    arch: str = "x86_64"  # the CPU architecture of an llvm target: 'x86_64' | 'aarch64'

    def __post_init__(self) -> None:
        if self.kind not in ("llvm", "cuda"):
            raise ValueError(f"unknown target kind {self.kind!r}; expected 'llvm' or 'cuda'")
        if self.kind == "cuda" and self.mcpu not in CUDA_ARCHS:
            raise ValueError(f"unsupported CUDA arch {self.mcpu!r}; expected one of {CUDA_ARCHS}")
        if self.arch not in TRIPLES:
            raise ValueError(f"unsupported CPU architecture {self.arch!r}; expected one of {tuple(TRIPLES)}")
        unknown = set(self.features) - set(LLVM_ATTRS)
        if unknown:
            raise ValueError(f"unknown CPU features {sorted(unknown)}; known: {CPU_FEATURES}")

    @property
    def key(self) -> str:
        """Stable text naming everything that changes the generated code."""
        arch = f"{self.arch}-" if self.kind == "llvm" else ""
        return f"{self.kind}-{arch}{self.mcpu}-{'+'.join(self.features)}-c{self.num_cores}"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def vector_lanes(self) -> int:
        """fp32 lanes of the widest vector register the schedules may use."""
        if self.arch == "aarch64":
            return 4
        return 16 if "avx512f" in self.features else 8

    @property
    def vector_registers(self) -> int:
        """Vector registers of the ISA: how many accumulators a register tile may keep."""
        return 32 if self.arch == "aarch64" or "avx512f" in self.features else 16

    def describe(self) -> str:
        """For EXPLAIN and benchmark headers: 'x86_64 haswell (avx2, fma, f16c)'."""
        where = self.arch if self.kind == "llvm" else "cuda"
        return f"{where} {self.mcpu} ({', '.join(self.features) or 'baseline'})"

    def has(self, feature: str) -> bool:
        return feature in self.features

    def can_run_on(self, host: Target) -> bool:
        """Whether code built for this target executes on `host` (same ISA, a subset of its features)."""
        return (self.kind == host.kind == "llvm" and self.arch == host.arch
                and set(self.features) <= set(host.features))

    def with_cores(self, num_cores: int) -> Target:
        return replace(self, num_cores=num_cores)

    def tvm_target(self):
        import tvm

        if self.kind == "cuda":
            return tvm.target.Target({"kind": "cuda", "arch": self.mcpu})
        spec = {"kind": "llvm", "mtriple": TRIPLES[self.arch], "mcpu": self.mcpu, "num-cores": self.num_cores}
        if self.features:
            spec["mattr"] = [LLVM_ATTRS[f] for f in self.features]
        return tvm.target.Target(spec)


_V3 = ("avx2", "fma", "f16c")
_AVX512 = _V3 + ("avx512f", "avx512bw", "avx512vl")
LEVELS = {
    "x86-64-v3": Target("llvm", "haswell", _V3),
    "avx512": Target("llvm", "skylake-avx512", _AVX512),
    "avx512-vnni": Target("llvm", "cascadelake", _AVX512 + ("avx512_vnni",)),
    "sapphirerapids": Target("llvm", "sapphirerapids", _AVX512 + ("avx512_bf16", "avx512_vnni", "avx512_fp16",
                                                                   "amx_tile", "amx_bf16", "amx_int8")),
    "aarch64": Target("llvm", "generic", ("neon",), arch="aarch64"),
    "aarch64-dotprod": Target("llvm", "neoverse-n1", ("neon", "dotprod"), arch="aarch64"),
}


def _mcpu_for(arch: str, flags: set[str]) -> str:
    if arch == "aarch64":
        return "neoverse-n1" if "dotprod" in flags else "generic"
    if {"amx_tile", "avx512_fp16"} <= flags:
        return "sapphirerapids"
    if {"avx512f", "avx512_vnni", "avx512_bf16"} <= flags:
        return "cooperlake"
    if {"avx512f", "avx512_vnni"} <= flags:
        return "cascadelake"
    if "avx512f" in flags:
        return "skylake-avx512"
    if "avx2" in flags:
        return "haswell"
    return "x86-64"


@functools.lru_cache(maxsize=None)
def detect_cpu(cpuinfo_path: str = "/proc/cpuinfo", machine: str | None = None) -> Target:
    """The LLVM target for the CPU this process runs on (x86 'flags' or aarch64 'Features')."""
    arch = "aarch64" if (machine or platform.machine()) in ("aarch64", "arm64") else "x86_64"
    flags: set[str] = set()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if arch == "aarch64":
        flags = {AARCH64_FLAGS.get(flag, flag) for flag in flags} | {"neon"}  # NEON is baseline on aarch64
    features = tuple(feature for feature in CPU_FEATURES if feature in flags)
    return Target("llvm", _mcpu_for(arch, flags), features, os.cpu_count() or 1, arch)


def level(name: str, num_cores: int | None = None) -> Target:
    """The named CPU level of LEVELS, for this host's core count unless given."""
    if name not in LEVELS:
        raise ValueError(f"unknown CPU level {name!r}; expected one of {tuple(LEVELS)}")
    return LEVELS[name].with_cores(num_cores or os.cpu_count() or 1)


def runnable_levels(host: Target | None = None) -> list[str]:
    """The levels whose code this host executes (an AVX-512 host runs the AVX2 kernels too)."""
    host = host or detect_cpu()
    return [name for name, target in LEVELS.items() if target.can_run_on(host)]


@functools.lru_cache(maxsize=None)
def host_target() -> Target:
    """What kernels are built for by default: this CPU, or the level `SQLM_CPU_TARGET` names."""
    host = detect_cpu()
    forced = os.environ.get("SQLM_CPU_TARGET", "").strip()
    if not forced or forced == "native":
        return host
    target = level(forced, host.num_cores)
    if not target.can_run_on(host):
        missing = sorted(set(target.features) - set(host.features))
        raise ValueError(f"SQLM_CPU_TARGET={forced!r} needs {', '.join(missing) or target.arch}, "
                         f"which this CPU ({host.mcpu}, {host.arch}) lacks")
    return target


def cuda(arch: str = "sm_90") -> Target:
    return Target("cuda", arch)
