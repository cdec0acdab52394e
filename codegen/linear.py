"""TVM-backed implementations of operators.linear.Linear.

`TvmQuantizedLinear` keeps the weight quantized: its GGUF blocks are repacked once into
codegen.packed's row-tile layout (same bytes). Per call it picks a kernel by the number of
tokens (codegen.quant_crossover): the fused VNNI GEMV for decode-sized batches, the fused
tiled GEMM above that, and with `prefill_dtype='bf16'` for large batches a dequantize into a
bf16 scratch shared by every layer of the same shape, then the bf16 matmul kernel on it (or, where
bf16 multiplies in torch: `bf16_torch`, an AMX CPU, a scratch W^T and torch's bf16 GEMM).
`TvmDenseLinear` runs the fp32 GEMV kernel for small batches and torch's GEMM above.
`TvmBf16Linear` runs bf16 weights through the bf16 matmul kernel (AVX512-BF16's pair dot product,
or its FMA twin), whatever the batch.
Either way one token's result does not depend on the batch it came in, as long as
the batch takes the same path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from catalog.quant import QuantizedTensor
from codegen.build import get_kernel
from codegen.greedy_screen import GreedyScreen
from codegen.kernels import bf16_matmul
from codegen.ops import aligned, tvm_view
from codegen.packed import pack
from codegen.quant_crossover import CROSSOVER, DENSE_GEMV_MAX_TOKENS, PATHS, SCREEN_MIN_ROWS, QuantCrossover
from codegen.target import host_target
from operators.tensor_ops import argmax_rows

_scratch: dict[tuple, torch.Tensor] = {}


def _scratch_matrix(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """One reusable buffer per shape and dtype (the dequantized weight of the moment)."""
    buf = _scratch.get((shape, dtype))
    if buf is None:
        buf = _scratch[(shape, dtype)] = aligned(torch.empty(shape, dtype=dtype))
    return buf


def kernel_views(packed) -> tuple:
    """A codegen.packed weight's tensors as TVM tensors, made once (zero-copy views): a torch tensor argument costs
    a DLPack conversion on every call, ~1 us each, and a decode step makes ~120 of these calls with 3 weight
    tensors each."""
    return tuple(tvm_view(aligned(t)) for t in packed.tensors)


class TvmQuantizedLinear:
    kernel = "tvm"

    def __init__(self, weight: QuantizedTensor, bias: torch.Tensor | None = None, prefill_dtype: str = "fp32",
                 crossover: QuantCrossover = CROSSOVER, bf16_torch: bool = False):
        if prefill_dtype not in ("fp32", "bf16"):
            raise ValueError(f"prefill_dtype must be 'fp32' or 'bf16', got {prefill_dtype!r}")
        self.weight = weight
        self.packed = pack(weight)
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.weight_format = weight.qtype
        self.prefill_dtype = prefill_dtype
        self.crossover = crossover
        self.bf16_torch = bf16_torch
        self._shape = {"qtype": weight.qtype, "n": weight.rows, "k": weight.cols}
        self._gemv = get_kernel("quant_gemv", self._shape).fn
        self._gemm = get_kernel("quant_gemm", self._shape).fn
        self._dequantize = self._bf16_matmul = None  # built on first use: only the bf16 path needs them
        self._weights = kernel_views(self.packed)
        self._screen: GreedyScreen | None = None  # an lm_head's: prepare_argmax

    def dequantized(self) -> torch.Tensor:
        """The weight in bf16 for the bf16 path, in the shared scratch buffer of its shape (valid until the next call
        for this shape): bf16_matmul.pack's layout (uint16), or W^T [K, N] where bf16 multiplies in torch."""
        if self._dequantize is None:
            layout = "transposed" if self.bf16_torch else "pairs"
            self._dequantize = get_kernel("dequantize", {**self._shape, "out_dtype": "bfloat16", "layout": layout}).fn
        if self.bf16_torch:
            dense = _scratch_matrix((self.in_features, self.out_features), torch.bfloat16)  # [K, N]
        else:
            vectors, _ = bf16_matmul.tiles(host_target())
            dense = _scratch_matrix((bf16_matmul.blocks(self.out_features, vectors), self.in_features // 2,
                                     2 * bf16_matmul.ROWS * vectors), torch.uint16)
        self._dequantize(*self._weights, dense)
        return dense

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(self.crossover.path(x.shape[0], self.prefill_dtype), x)

    def argmax(self, x: torch.Tensor, excluded) -> list[int]:
        """Each row's argmax of x W^T [T, K], leaving out its `excluded` ids: greedy sampling over an lm_head,
        through codegen.greedy_screen (exact, without every row's product); with a bias, from the full product."""
        if self.bias is not None or x.shape[0] < SCREEN_MIN_ROWS:
            return argmax_rows(self(x), excluded)
        self.prepare_argmax()
        return self._screen.argmax(x, excluded)

    def prepare_argmax(self) -> None:
        """Build the greedy screen (its row norms, from every dequantized row: ~0.1-0.2 s for SmolLM2's lm_head) now, when the model
        loads, rather than inside the first greedy query's time."""
        if self.bias is None and self._screen is None:
            self._screen = GreedyScreen(self.weight, self._weights, self)

    def run(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """x [T, K] through one of quant_crossover.PATHS, whatever T (benchmarks, tests)."""
        x = aligned(x)
        if path == "dequant_bf16" and self.bf16_torch:
            out = torch.matmul(x.to(torch.bfloat16), self.dequantized()).float()  # [T, N]
        elif path == "dequant_bf16":
            if self._bf16_matmul is None:
                self._bf16_matmul = get_kernel("bf16_matmul", {"n": self.out_features, "k": self.in_features,
                                                               "out_dtype": "fp32"}).fn
            out = torch.empty(x.shape[0], self.out_features)  # [T, N]
            self._bf16_matmul(aligned(x.to(torch.bfloat16)), self.dequantized(), out)
        elif path in ("gemv", "gemm"):
            out = torch.empty(x.shape[0], self.out_features)  # [T, N]
            self.run_into(path, x, out)
        else:
            raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")
        return out if self.bias is None else out + self.bias

    def run_into(self, path: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """The fused kernel alone ('gemv' or 'gemm'), no bias: x [T, K] fp32 and out [T, N] fp32, both
        contiguous and 64-byte aligned (benchmarks time this without the per-call allocation)."""
        (self._gemv if path == "gemv" else self._gemm)(x, *self._weights, out)

    def kernel_call(self, tokens: int, x, out) -> tuple | None:
        """(kernel, arguments) that compute out = x W^T for `tokens` rows, x and out given as kernel-side buffers
        (codegen.captured_forward), or None where that is not one fused kernel (a bias, the bf16 path)."""
        path = self.crossover.path(tokens, self.prefill_dtype)
        if self.bias is not None or path == "dequant_bf16":
            return None
        return (self._gemv if path == "gemv" else self._gemm), (x, *self._weights, out)


class TvmDenseLinear:
    kernel = "tvm"
    weight_format = "fp32"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 gemv_max_tokens: int = DENSE_GEMV_MAX_TOKENS):
        self.weight = aligned(weight.float())  # TVM's vector loads assume 64-byte alignment
        self.bias = bias
        self.out_features, self.in_features = self.weight.shape
        self.gemv_max_tokens = gemv_max_tokens
        self._gemv = get_kernel("dense_matmul", {"n": self.out_features, "k": self.in_features}).fn
        self._weight = tvm_view(self.weight)  # converted once, as TvmQuantizedLinear's

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = aligned(x)
        if x.shape[0] > self.gemv_max_tokens:
            return F.linear(x, self.weight, self.bias)  # [T, N]
        out = torch.empty(x.shape[0], self.out_features)  # [T, N]
        self._gemv(x, self._weight, out)
        return out if self.bias is None else out + self.bias

    def kernel_call(self, tokens: int, x, out) -> tuple | None:
        """As TvmQuantizedLinear.kernel_call: the GEMV up to gemv_max_tokens rows (torch's GEMM above is not a
        kernel of ours)."""
        if self.bias is not None or tokens > self.gemv_max_tokens:
            return None
        return self._gemv, (x, self._weight, out)


class TvmBf16Linear:
    """bf16 weight [N, K] (K even), packed once into the bf16 matmul's layout; takes fp32 or bf16 input and
    returns bf16, as operators.linear.DenseLinear's bf16 path. Made from quantized GGUF blocks (`source`), an lm_head
    takes greedy argmaxes through codegen.greedy_screen over those blocks, at any number of rows: the screen reads
    the blocks (Q8_0: 1.06 bytes a weight) where the bf16 product reads 2 bytes a weight and makes every logit."""

    kernel = "tvm"
    weight_format = "bf16"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, source: QuantizedTensor | None = None):
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.to(torch.bfloat16)
        vectors, _ = bf16_matmul.tiles(host_target())
        self.packed = aligned(bf16_matmul.pack(weight.to(torch.bfloat16), vectors))
        self._matmul = get_kernel("bf16_matmul", {"n": self.out_features, "k": self.in_features}).fn
        self._weight = tvm_view(self.packed)  # converted once, as TvmQuantizedLinear's
        self._source = source
        self._screen: GreedyScreen | None = None  # an lm_head's: prepare_argmax

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = aligned(x.to(torch.bfloat16))
        out = torch.empty(x.shape[0], self.out_features, dtype=torch.bfloat16)  # [T, N]
        self._matmul(x, self._weight, out)
        return out if self.bias is None else out + self.bias

    def argmax(self, x: torch.Tensor, excluded) -> list[int]:
        """Each row's argmax of the logits x W^T [T, K] before their rounding to bf16 (so also an argmax of the
        rounded ones, with near-ties decided by the unrounded value), leaving out its `excluded` ids."""
        self.prepare_argmax()
        if self._screen is None:
            return argmax_rows(self(x).float(), excluded)
        return self._screen.argmax(x.to(torch.bfloat16).float(), excluded)

    def prepare_argmax(self) -> None:
        """Build the greedy screen over the source blocks (packed once more, the bf16 weights' rounding error
        measured: ~0.3 s for SmolLM2's lm_head), where there are blocks and no bias."""
        if self._screen is None and self._source is not None and self.bias is None:
            self._screen = GreedyScreen(self._source, kernel_views(pack(self._source)), lambda x: self(x).float(),
                                        exact_dtype=torch.bfloat16)

    def kernel_call(self, tokens: int, x, out) -> tuple | None:
        """As TvmQuantizedLinear.kernel_call: x [tokens, K] and out [tokens, N] bf16."""
        return None if self.bias is not None else (self._matmul, (x, self._weight, out))
