"""Which kernel a quantized linear runs for a batch of T tokens: data measured on this machine.
(The dense twin, `DENSE_GEMV_MAX_TOKENS`, is here too: the planner reads both without importing the kernels.)

Measured 2026-11-22 on SmolLM2-135M's four decoder matrices in Q4_1 (qkv 960x576, o 576x576,
gate_up 3072x576, down 576x1536), one thread, implementations interleaved, thread CPU time
(the machine was shared; `python -m bench.kernels` reports the same paths at T = 1..128):

- fused VNNI GEMV (codegen.kernels.quant_gemv): cost linear in T (three int8 dot products
  per weight and token). At T=8 it was 0-15% faster than the GEMM, at T=12 equal, at T=16
  the GEMM was 2-15% faster: `gemv_max_tokens` = 8.
- fused tiled GEMM (codegen.kernels.quant_gemm): unpacks each weight once per call, then
  fp32 FMAs; 1.05-2.1x torch's fp32 GEMM on the already dequantized weight at T=16..128,
  about equal at 512. Dequantizing the whole matrix then calling torch's fp32 GEMM was 1.3x
  slower or worse at every T, so that is not a path.
- with `prefill_dtype='bf16'` (8 mantissa bits: the accuracy loss EXPLAIN states), the TVM
  dequantize to bf16 + torch's bf16 GEMM (AMX) was 1.06-1.36x faster than the GEMM at T=64
  and 1.5-2.8x at T=128..512: `bf16_min_tokens` = 64.
"""
from __future__ import annotations

from dataclasses import dataclass

PATHS = ("gemv", "gemm", "dequant_bf16")


@dataclass(frozen=True)
class QuantCrossover:
    gemv_max_tokens: int  # fused GEMV for 1..gemv_max_tokens tokens
    bf16_min_tokens: int  # bf16 allowed: dequantize + torch bf16 GEMM from here on

    def __post_init__(self) -> None:
        if self.gemv_max_tokens < 0 or self.bf16_min_tokens <= self.gemv_max_tokens:
            raise ValueError(f"need 0 <= gemv_max_tokens < bf16_min_tokens, got {self}")

    def path(self, tokens: float, prefill_dtype: str = "fp32") -> str:
        if tokens <= self.gemv_max_tokens:
            return "gemv"
        if prefill_dtype == "bf16" and tokens >= self.bf16_min_tokens:
            return "dequant_bf16"
        return "gemm"


CROSSOVER = QuantCrossover(gemv_max_tokens=8, bf16_min_tokens=64)
DENSE_GEMV_MAX_TOKENS = 4  # codegen.linear.TvmDenseLinear (fp32 weights): the TVM GEMV up to here, torch's GEMM above
