"""Linear layers: the one place a model multiplies by a weight matrix.

The model calls `layer(x)` and never knows how the weight is stored; the planner
picks the implementation (torch or a TVM kernel) and the weight format.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F

from catalog.quant import QuantizedTensor


class Linear(Protocol):
    in_features: int
    out_features: int
    weight_format: str  # 'fp32' | 'bf16' | 'Q4_1' | 'Q4_0' | 'Q8_0'
    kernel: str  # 'torch' | 'tvm'

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[T, K] fp32 or bf16 -> [T, N]: bf16 for bf16 weights, fp32 otherwise."""
        ...


class DenseLinear:
    """Weight [N, K] held as fp32 or bf16.

    bf16 multiplies on AMX through oneDNN, with the weight packed once into oneDNN's blocked
    layout (repacking it on every call costs more than the multiply at decode sizes); it takes
    fp32 or bf16 input and returns bf16, which the next operator consumes as is (SiLU·mul and
    the down projection stay in bf16, as in HF's bf16 models; residual adds widen to fp32).
    """

    kernel = "torch"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if weight.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"DenseLinear takes fp32 or bf16 weights, got {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        self.weight_format = "bf16" if weight.dtype == torch.bfloat16 else "fp32"
        self.bias = bias if bias is None or self.weight_format == "fp32" else bias.to(torch.bfloat16)
        self.weight = _pack_bf16(weight.contiguous()) if self.weight_format == "bf16" else weight.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_format == "bf16":
            return _bf16_linear(x.to(torch.bfloat16), self.weight, self.bias)  # [T, N] bf16
        return F.linear(x, self.weight, self.bias)  # [T, N]


_PACK_BATCH = 64  # oneDNN picks its blocked layout for this many rows; any row count works after


@lru_cache(maxsize=None)
def _onednn_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _pack_bf16(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_BATCH) if _onednn_bf16() else weight


def _bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if _onednn_bf16():
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class QuantizedLinear:
    """Reference for quantized weights: dequantizes the blocks on every call (exact, slow)."""

    kernel = "torch"

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.weight_format = weight.qtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.dequantize(), self.bias)  # [T, N]


def make_linear(weight: torch.Tensor | QuantizedTensor, weight_format: str, bias: torch.Tensor | None = None) -> Linear:
    """Torch implementation of a weight in the requested format ('fp32', 'bf16' or 'native')."""
    if weight_format == "native" and isinstance(weight, QuantizedTensor):
        return QuantizedLinear(weight, bias)
    dense = weight.dequantize() if isinstance(weight, QuantizedTensor) else weight.float()
    if weight_format == "bf16":
        return DenseLinear(dense.to(torch.bfloat16), bias)
    if weight_format in ("fp32", "native"):
        return DenseLinear(dense, bias)
    raise ValueError(f"unknown weight format {weight_format!r}; expected fp32, bf16 or native")
