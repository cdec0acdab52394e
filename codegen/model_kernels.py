"""Build a model whose linears and operators run on TVM kernels (or on torch).

    from codegen.model_kernels import build_model
    model = build_model(loaded, kernels="tvm", weight_format="native")

is operators.llama.build_model with codegen's linear factory and ModelOps. The pieces
are also available separately (`linear_factory`, `model_ops`) for a caller that
assembles the model itself, and `paged_attention` for the engine's attention backend.
"""
from __future__ import annotations

from functools import partial

import torch

from catalog.quant import QuantizedTensor
from codegen import interleaved_with_torch
from codegen import ops as tvm_ops
from codegen.linear import TvmBf16Linear, TvmDenseLinear, TvmQuantizedLinear
from codegen.packed import QUANT_BYTES
from codegen.quant_crossover import CROSSOVER, QuantCrossover, bf16_on_torch, host_crossover
from operators.linear import DenseLinear, make_linear
from operators.llama import LlamaModel, ModelOps
from operators.llama import build_model as build_llama

KERNELS = ("auto", "tvm", "torch")
WEIGHT_FORMATS = ("auto", "native", "fp32", "bf16")


def resolve(kernels: str, weight_format: str, loaded) -> tuple[str, str]:
    """'auto' choices, from the kernel measurements in bench/kernels.py: the fused TVM
    kernels beat torch at decode sizes, and quantized weights are read 5-6x fewer bytes."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
    if kernels == "auto":
        kernels = "tvm"
    if weight_format == "auto":
        quantized = any(isinstance(w, QuantizedTensor) for w in loaded.weights.values())
        weight_format = "native" if quantized and kernels == "tvm" else "fp32"
    return kernels, weight_format


def tvm_linear(weight, weight_format: str, bias: torch.Tensor | None = None, *, prefill_dtype: str = "fp32",
               crossover: QuantCrossover = CROSSOVER, bf16_torch: bool = False):
    """operators.llama.LinearFactory on TVM kernels; bf16 weights stay on torch where `bf16_torch`
    (codegen.quant_crossover.bf16_on_torch)."""
    if weight_format == "native" and isinstance(weight, QuantizedTensor):
        return TvmQuantizedLinear(weight, bias, prefill_dtype=prefill_dtype, crossover=crossover,
                                  bf16_torch=bf16_torch)
    dense = weight.dequantize() if isinstance(weight, QuantizedTensor) else weight.float()
    if weight_format == "bf16":
        if bf16_torch or dense.shape[1] % 2:
            return DenseLinear(dense.to(torch.bfloat16), bias)
        screenable = isinstance(weight, QuantizedTensor) and weight.qtype in QUANT_BYTES  # blocks the screen reads
        return TvmBf16Linear(dense.to(torch.bfloat16), bias, source=weight if screenable else None)
    if weight_format in ("fp32", "native"):
        return TvmDenseLinear(dense, bias)
    raise ValueError(f"unknown weight format {weight_format!r}; expected fp32, bf16 or native")


def linear_factory(kernels: str, **options):
    """TVM's linears take this machine's measured GEMV crossover (codegen.quant_crossover.host_crossover) and bf16
    path (bf16_on_torch) unless options name them."""
    if kernels != "tvm":
        return make_linear
    return partial(tvm_linear, **{"crossover": host_crossover(), "bf16_torch": bf16_on_torch(), **options})


def model_ops(kernels: str) -> ModelOps:
    if kernels == "torch":
        return ModelOps()
    return ModelOps(rms_norm=tvm_ops.rms_norm, add_rms_norm=tvm_ops.add_rms_norm, silu_mul=tvm_ops.silu_mul,
                    name="tvm")


def build_model(loaded, kernels: str = "auto", weight_format: str = "auto", **options) -> LlamaModel:
    kernels, weight_format = resolve(kernels, weight_format, loaded)
    bf16 = weight_format == "bf16" or options.get("prefill_dtype") == "bf16"
    if bf16 and (kernels == "torch" or bf16_on_torch()):
        # torch's bf16 GEMMs run between TVM's kernels (the attention's, at least) on every step; the other
        # paths keep TVM's spin, which their back-to-back TVM kernels need (a process runs one of them in practice)
        interleaved_with_torch()
    if kernels == "tvm":
        tvm_ops.warm_up(loaded.config, dtypes=("bf16",) if weight_format == "bf16" else ("fp32",))
    model = build_llama(loaded, weight_format, linear_factory=linear_factory(kernels, **options),
                        ops=model_ops(kernels))
    if kernels == "tvm":
        # norm weights may be unaligned views into the GGUF file; copy them once here rather
        # than on every call (tvm_ops.aligned)
        for layer in model.layers:
            layer.input_norm, layer.post_norm = tvm_ops.aligned(layer.input_norm), tvm_ops.aligned(layer.post_norm)
        model.final_norm = tvm_ops.aligned(model.final_norm)
        prepare_argmax = getattr(model.lm_head, "prepare_argmax", None)
        if prepare_argmax is not None:  # the greedy screen's setup belongs to loading the model
            prepare_argmax()
    return model


paged_attention = tvm_ops.paged_attention
