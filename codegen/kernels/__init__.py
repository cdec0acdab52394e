"""Every kernel the project generates, by name."""
from codegen.kernels import dense_matmul, dequantize, paged_attention, quant_matmul, rms_norm, rope, silu_mul

KERNELS = {spec.name: spec for spec in (
    dense_matmul.SPEC,
    dequantize.SPEC,
    paged_attention.SPEC,
    quant_matmul.SPEC,
    rms_norm.SPEC,
    rope.SPEC,
    silu_mul.SPEC,
)}
