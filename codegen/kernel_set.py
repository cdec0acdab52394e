"""The one seam between codegen and the runtime: the kernels of one device, asked for by name.

The planner decides which implementation each operator runs (`kernels`, `weight_format`,
`attention_kernel` in the engine configuration); the runtime builds its model and its
attention backend from a `KernelSet` handed to it, and imports no kernel module itself.
A set belongs to one device: 'cpu' compiles through LLVM for the host's instruction
set, 'cuda' for the GPU's arch (where torch sees one).

    from codegen.kernel_set import kernel_set
    kernels = kernel_set("cpu")
    model = kernels.build_model(loaded, kernels="tvm", weight_format="native")
    attention = kernels.attention()   # rope_qkv + paged_attention, for the engine's paged KV cache
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from catalog.model_config import ModelConfig
from codegen import ops
from codegen.target import Target, cuda, host_target

DEVICES = ("cpu", "cuda")
OPS = ("rms_norm", "add_rms_norm", "silu_mul", "rope_qkv", "paged_attention")  # codegen.ops, by name


@dataclass(frozen=True)
class AttentionKernels:
    """RoPE + KV-cache write and paged attention, called once per layer by the engine's model runner
    (signatures: codegen.ops.rope_qkv and codegen.ops.paged_attention)."""
    rope_qkv: Callable
    paged_attention: Callable
    warm_up: Callable[[ModelConfig, int, str, str], None]  # (config, block_size, activation dtype, KV dtype)
    # a zero-copy kernel-side view of a contiguous tensor, for arguments passed on every layer's call (the KV
    # cache, a step's slot and block tables): a torch tensor is converted on each call
    view: Callable = ops.tvm_view
    # a whole forward pass of at most capture_max_tokens rows as pre-bound kernel calls
    # (codegen.captured_forward.capture), or None
    capture: Callable | None = None
    capture_max_tokens: int = 0
    # the paged-attention kernel's scratch for a step: (num_seqs, Hq, Hkv, D, max_blocks, block_size) -> tensor
    # (codegen.ops.attention_partials), made once a step and passed to every layer's call as `partials`
    partials: Callable | None = None


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_target() -> Target:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' needs a GPU that torch can see (this torch build or machine has none)")
    major, minor = torch.cuda.get_device_capability()
    return cuda(f"sm_{major}{minor}")


@dataclass(frozen=True)
class KernelSet:
    device: str  # 'cpu' | 'cuda'
    target: Target  # what TVM compiles this set's kernels for

    def build_model(self, loaded, kernels: str = "auto", weight_format: str = "auto", **options):
        """The model with its linears and row operators on `kernels` ('tvm' | 'torch' | 'auto')."""
        if self.device != "cpu":
            raise NotImplementedError(f"the engine's model runs on the CPU; on {self.device} this set provides "
                                      f"the row and attention kernels only")
        from codegen.model_kernels import build_model

        return build_model(loaded, kernels=kernels, weight_format=weight_format, **options)

    def op(self, name: str) -> Callable:
        """The kernel `name` (one of OPS) over tensors on this set's device, compiled for its target."""
        if name not in OPS:
            raise ValueError(f"no kernel named {name!r}; this set has {', '.join(OPS)}")
        # the host's kernels are codegen.ops' default target: None keys their per-call lookup cheaply
        return functools.partial(getattr(ops, name), target=None if self.device == "cpu" else self.target)

    def attention(self) -> AttentionKernels:
        target = None if self.device == "cpu" else self.target

        def warm_up(config: ModelConfig, block_size: int, x_dtype: str, kv_dtype: str) -> None:
            ops.warm_up_attention(config, block_size, x_dtype, kv_dtype, target=target)
        partials = functools.partial(ops.attention_partials, lanes=ops.attention_lanes(target), device=self.device)
        if self.device != "cpu":
            return AttentionKernels(self.op("rope_qkv"), self.op("paged_attention"), warm_up, partials=partials)
        from codegen.captured_forward import capture
        from codegen.quant_crossover import CAPTURED_MAX_TOKENS
        return AttentionKernels(self.op("rope_qkv"), self.op("paged_attention"), warm_up, capture=capture,
                                capture_max_tokens=CAPTURED_MAX_TOKENS, partials=partials)


@functools.lru_cache(maxsize=None)
def kernel_set(device: str = "cpu") -> KernelSet:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return KernelSet(device, host_target() if device == "cpu" else _gpu_target())
