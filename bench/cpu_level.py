"""Running a benchmark as a smaller machine would: a codegen.target level's caps for every engine.

On a larger CPU, `SQLM_CPU_TARGET=LEVEL` builds sqlm's kernels for the level; torch's, oneDNN's and MKL's own
instruction-set dispatch is capped by the variables below, which they read when they load, so a benchmark starts
again under them (`run_at`) before torch loads. The restart gets the environment the user started with: the catalog
sets OMP_WAIT_POLICY=PASSIVE for its own pools when it loads (bench/__init__.py imports it first), which peers started
from the restarted process would inherit (llama.cpp's decode runs ~3x slower with sleeping OpenMP workers).
"""
from __future__ import annotations

import os
import sys

LIBRARY_CAPS = {
    "x86-64-v3": {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "DNNL_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx512-vnni": {"ATEN_CPU_CAPABILITY": "avx512", "DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX512_E1"},
}


def level_environment(level: str) -> dict[str, str]:
    """The environment variables that make this machine run `level`'s code paths (sqlm's kernels and torch's)."""
    if level not in LIBRARY_CAPS:
        raise ValueError(f"unknown CPU level {level!r} for a benchmark; expected one of {tuple(LIBRARY_CAPS)}")
    return {"SQLM_CPU_TARGET": level, **LIBRARY_CAPS[level]}


def run_at(level: str, module: str) -> None:
    """Start `python -m module` with this process's arguments again under `level`'s caps, unless they hold
    already. Call it first thing: nothing of sqlm or torch may have loaded."""
    from catalog.threading_env import INHERITED_OMP_WAIT_POLICY

    caps = level_environment(level)
    if any(os.environ.get(k) != v for k, v in caps.items()):
        env = {**os.environ, **caps}
        if INHERITED_OMP_WAIT_POLICY is None:
            env.pop("OMP_WAIT_POLICY", None)
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
