"""Which machine the kernels are compiled for.

`detect_cpu()` reads /proc/cpuinfo once and returns the LLVM target for this CPU with
the vector features the schedules rely on; `cuda(arch)` names a GPU target. A `Target`
is a plain frozen value: its `key` enters the on-disk kernel cache key, and
`tvm_target()` builds the TVM object only when something is compiled.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

CPU_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class Target:
    kind: str  # 'llvm' | 'cuda'
    mcpu: str = ""  # LLVM cpu name, or the CUDA arch
    features: tuple[str, ...] = ()
    num_cores: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("llvm", "cuda"):
            raise ValueError(f"unknown target kind {self.kind!r}; expected 'llvm' or 'cuda'")
        if self.kind == "cuda" and self.mcpu not in CUDA_ARCHS:
            raise ValueError(f"unsupported CUDA arch {self.mcpu!r}; expected one of {CUDA_ARCHS}")

    @property
    def key(self) -> str:
        """Stable text naming everything that changes the generated code."""
        return f"{self.kind}-{self.mcpu}-{'+'.join(self.features)}-c{self.num_cores}"

    @property
    def vector_lanes(self) -> int:
        """fp32 lanes of the widest vector register the schedules may use."""
        return 16 if "avx512f" in self.features else 8

    def has(self, feature: str) -> bool:
        return feature in self.features

    def tvm_target(self):
        import tvm

        if self.kind == "cuda":
            return tvm.target.Target({"kind": "cuda", "arch": self.mcpu})
        return tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": self.mcpu,
                                  "num-cores": self.num_cores})


def _mcpu_for(flags: set[str]) -> str:
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
def detect_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> Target:
    """The LLVM target for the CPU this process runs on."""
    flags: set[str] = set()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    features = tuple(feature for feature in CPU_FEATURES if feature in flags)
    return Target("llvm", _mcpu_for(flags), features, os.cpu_count() or 1)


def cuda(arch: str = "sm_90") -> Target:
    return Target("cuda", arch)
