"""Linear layers: the one place a model multiplies by a weight matrix.

The model calls `layer(x)` and never knows how the weight is stored; the planner
picks the implementation (torch or a TVM kernel) and the weight format.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from catalog.quant import QuantizedTensor


class Linear(Protocol):
    in_features: int
    out_features: int
    weight_format: str  # 'fp32' | 'bf16' | 'Q4_1' | 'Q4_0' | 'Q8_0'
    kernel: str  # 'torch' | 'tvm'

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [T, K] fp32 -> [T, N] fp32
        ...


class DenseLinear:
    """Weight [N, K] held as fp32 or bf16; bf16 multiplies in bf16 (AMX) and returns fp32."""

    kernel = "torch"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if weight.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"DenseLinear takes fp32 or bf16 weights, got {weight.dtype}")
        self.weight = weight.contiguous()
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.weight_format = "bf16" if weight.dtype == torch.bfloat16 else "fp32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.bfloat16:
            y = F.linear(x.to(torch.bfloat16), self.weight).float()  # [T, N]
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)  # [T, N]


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
