"""Every kernel the project generates, by name."""
from codegen.kernels import (add_rms_norm, bf16_matmul, dense_matmul, dequantize, paged_attention, quant_gemm,
                             quant_gemv, rope_qkv, silu_mul)

KERNELS = {spec.name: spec for spec in (
    add_rms_norm.SPEC,
    bf16_matmul.SPEC,
    dense_matmul.SPEC,
    dequantize.SPEC,
    paged_attention.SPEC,
    quant_gemm.SPEC,
    quant_gemv.SPEC,
    add_rms_norm.RMS_NORM,
    rope_qkv.SPEC,
    silu_mul.SPEC,
)}
