"""TVM-backed implementations of operators.linear.Linear.

`TvmQuantizedLinear` keeps the weight quantized: its GGUF blocks are repacked once into
codegen.packed's row-tile layout (same bytes). Up to `gemv_max_tokens` rows it runs the
fused dequantize-GEMV kernel; above that it dequantizes once per call into a scratch
W^T shared by every layer of the same shape and runs torch's GEMM (fp32, or bf16
through AMX when `prefill_dtype='bf16'`).
`TvmDenseLinear` runs the fp32 GEMV kernel for small batches and torch's GEMM above.
Either way one token's result does not depend on the batch it came in, as long as
the batch stays on the same side of the threshold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from catalog.quant import QuantizedTensor
from codegen.build import get_kernel
from codegen.ops import aligned
from codegen.packed import pack

DEFAULT_GEMV_MAX_TOKENS = 4
_scratch: dict[tuple[int, int], torch.Tensor] = {}


def _scratch_matrix(rows: int, cols: int) -> torch.Tensor:
    """One reusable fp32 [rows, cols] buffer per shape (the dequantized weight of the moment)."""
    buf = _scratch.get((rows, cols))
    if buf is None:
        buf = _scratch[(rows, cols)] = torch.empty(rows, cols)
    return buf


class TvmQuantizedLinear:
    kernel = "tvm"

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None,
                 gemv_max_tokens: int = DEFAULT_GEMV_MAX_TOKENS, prefill_dtype: str = "fp32"):
        if prefill_dtype not in ("fp32", "bf16"):
            raise ValueError(f"prefill_dtype must be 'fp32' or 'bf16', got {prefill_dtype!r}")
        self.packed = pack(weight)
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.weight_format = weight.qtype
        self.gemv_max_tokens = gemv_max_tokens
        self.prefill_dtype = prefill_dtype
        shape = {"qtype": weight.qtype, "n": weight.rows, "k": weight.cols}
        self._gemv = get_kernel("quant_matmul", shape).fn
        self._dequantize = get_kernel("dequantize", shape).fn

    def dequantized_t(self) -> torch.Tensor:
        """fp32 W^T [K, N] in the shared scratch buffer (valid until the next call for this shape)."""
        dense_t = _scratch_matrix(self.in_features, self.out_features)  # [K, N]
        self._dequantize(*self.packed.tensors, dense_t)
        return dense_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = aligned(x)
        if x.shape[0] <= self.gemv_max_tokens:
            out = torch.empty(x.shape[0], self.out_features)  # [T, N]
            self._gemv(x, *self.packed.tensors, out)
        elif self.prefill_dtype == "bf16":
            out = torch.matmul(x.to(torch.bfloat16), self.dequantized_t().to(torch.bfloat16)).float()
        else:
            out = torch.matmul(x, self.dequantized_t())  # [T, N]
        return out if self.bias is None else out + self.bias


class TvmDenseLinear:
    kernel = "tvm"
    weight_format = "fp32"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 gemv_max_tokens: int = DEFAULT_GEMV_MAX_TOKENS):
        self.weight = aligned(weight.float())  # TVM's vector loads assume 64-byte alignment
        self.bias = bias
        self.out_features, self.in_features = self.weight.shape
        self.gemv_max_tokens = gemv_max_tokens
        self._gemv = get_kernel("dense_matmul", {"n": self.out_features, "k": self.in_features}).fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = aligned(x)
        if x.shape[0] > self.gemv_max_tokens:
            return F.linear(x, self.weight, self.bias)  # [T, N]
        out = torch.empty(x.shape[0], self.out_features)  # [T, N]
        self._gemv(x, self.weight, out)
        return out if self.bias is None else out + self.bias
