"""Kernel name + static parameters + target -> a compiled function over torch tensors.

Every kernel module in `codegen/kernels/` has a factory in three parts:
`make_<kernel>(**params) -> PrimFunc`, `<kernel>_config(target, **params) -> dict`
and `schedule_<kernel>(sch, cfg)`, gathered in one `KernelSpec`. CPU builds use the
hand schedule; CUDA builds use the kernel's own GPU schedule when it has one, else
TVM's dlight default GPU rules.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from codegen.cache import KernelCache, KernelKey, source_digest
from codegen.target import Target, host_target


@dataclass(frozen=True)
class KernelSpec:
    name: str
    make: Callable[..., Any]  # (**params) -> tvm.tirx.PrimFunc
    config: Callable[..., dict]  # (target, **params) -> tiles and flags
    schedule: Callable[[Any, dict], None]  # (s_tir.Schedule, cfg) -> None, in place
    args: tuple[str, ...]  # positional tensor arguments of the compiled function, outputs last
    source_file: str
    schedule_gpu: Callable[[Any, dict], None] | None = None
    scheduled: bool = False  # `make` already writes the loop structure (plain TIR, no blocks)
    depends: tuple[str, ...] = ()  # other source files the generated code depends on (helpers, layouts)


@dataclass(frozen=True)
class CompiledKernel:
    """A compiled kernel; call it with torch tensors in `spec.args` order (outputs written in place)."""

    spec: KernelSpec
    params: tuple[tuple[str, Any], ...]
    target: Target
    fn: Any

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *tensors) -> None:
        self.fn(*tensors)


def _freeze(params: dict) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def schedule(spec: KernelSpec, params: dict, target: Target):
    """The scheduled IRModule of one kernel for `target`."""
    import tvm
    from tvm import s_tir

    cfg = spec.config(target, **params)
    if spec.scheduled:
        # Plain-TIR kernels write their loops themselves, with the target's intrinsics; the GPU
        # twin binds the outer loop to blocks instead of CPU threads.
        return tvm.IRModule({"main": spec.make(**params, target=target)})
    func = spec.make(**params)
    if target.kind == "cuda":
        if spec.schedule_gpu is not None:
            sch = s_tir.Schedule(func)
            spec.schedule_gpu(sch, cfg)
            return sch.mod
        sch = s_tir.Schedule(func)
        schedule_gpu_threads(sch)
        return sch.mod
    sch = s_tir.Schedule(func)
    spec.schedule(sch, cfg)
    return sch.mod


def schedule_gpu_threads(sch, threads: int = 128) -> None:
    """The plain GPU schedule: each block's spatial loops fused and spread over
    blockIdx x threadIdx, reductions serial within a thread. Correct for every TE
    kernel here (dlight's analysis rejects the fused-dequant access patterns); a
    kernel with a faster GPU schedule supplies its own `schedule_gpu`."""
    for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
        iters = sch.get(block).iter_vars
        num_spatial = sum(1 for it in iters if it.iter_type == 0)
        loops = sch.get_loops(block)[:num_spatial]
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        bx, tx = sch.split(fused, [None, threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False


def spec_source_digest(spec: KernelSpec) -> str:
    """Digest of every source file that shapes the kernel's code: an edit to any recompiles it."""
    return source_digest(spec.source_file, *spec.depends, __file__)


def compile_kernel(spec: KernelSpec, params: dict, target: Target):
    import tvm

    return tvm.compile(schedule(spec, params, target), target=target.tvm_target())


def cuda_source(name: str, params: dict, arch: str = "sm_90") -> str:
    """CUDA C source of one kernel (generated without a GPU)."""
    from codegen.kernels import KERNELS
    from codegen.target import cuda

    executable = compile_kernel(KERNELS[name], params, cuda(arch))
    return executable.mod.imports[0].inspect_source()


_memo: dict[tuple, CompiledKernel] = {}
_lock = threading.Lock()
_default_cache: KernelCache | None = None


def default_cache() -> KernelCache:
    global _default_cache
    if _default_cache is None:
        _default_cache = KernelCache()
    return _default_cache


def get_kernel(name: str, params: dict, target: Target | None = None,
               cache: KernelCache | None = None) -> CompiledKernel:
    """The compiled kernel `name` for `params`: from this process, from disk, or compiled now."""
    import tvm

    from codegen.kernels import KERNELS

    spec = KERNELS[name]
    target = target or host_target()
    cache = cache or default_cache()
    frozen = _freeze(params)
    memo_key = (name, frozen, target.key, str(cache.root))
    with _lock:
        if memo_key in _memo:
            return _memo[memo_key]
        key = KernelKey(name, frozen, target.key, tvm.__version__, spec_source_digest(spec))
        module = cache.load_or_build(key, lambda: compile_kernel(spec, params, target))
        kernel = CompiledKernel(spec, frozen, target, module["main"])
        _memo[memo_key] = kernel
        return kernel


def clear_memo() -> None:
    """Forget the kernels loaded by this process (tests use it to check the disk cache)."""
    with _lock:
        _memo.clear()
