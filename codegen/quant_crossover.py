"""Which kernel a quantized linear runs for a batch of T tokens: data measured on the machine.
(The dense twin, `DENSE_GEMV_MAX_TOKENS`, is here too: the planner reads both without importing the kernels; so is
where bf16 weights multiply, `bf16_on_torch`, with the margin calibration decides it by.)

Where the GEMV stops paying depends on the core, not only on its instruction sets: on Zen 4
(AVX-512 VNNI, one 512-bit FMA a cycle) the three-piece VNNI GEMV beat the GEMM at every size
from 2 to 512 rows (2026-12-07, 2 threads: 1.2-1.3x at 64 and 128 rows on all five SmolLM2
matrices), on Sapphire Rapids (two 512-bit FMA ports) only up to ~12. So the machine's
hardware profile carries its own bound (`quant_gemv_max_tokens`, timed on GEMV_CROSSOVER_GRID by
planner.hardware_calibration): `host_crossover()` for a model being built, `crossover_for(...)`
for the cost model. CROSSOVER below is what a machine without a stored profile gets, measured
2026-11-22 on Sapphire Rapids on SmolLM2-135M's four decoder matrices in Q4_1 (qkv 960x576,
o 576x576, gate_up 3072x576, down 576x1536), one thread, implementations interleaved, thread CPU
time (the machine was shared; `python -m bench.kernels` reports the same paths at T = 1..128):

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

from dataclasses import dataclass, replace

PATHS = ("gemv", "gemm", "dequant_bf16")


@dataclass(frozen=True)
class QuantCrossover:
    gemv_max_tokens: int  # fused GEMV for 1..gemv_max_tokens tokens
    bf16_min_tokens: int  # bf16 allowed: dequantize + torch bf16 GEMM from here on

    def __post_init__(self) -> None:
        if self.gemv_max_tokens < 0 or self.bf16_min_tokens < 1:
            raise ValueError(f"need gemv_max_tokens >= 0 and bf16_min_tokens >= 1, got {self}")

    def path(self, tokens: float, prefill_dtype: str = "fp32") -> str:
        """bf16, where SET, from bf16_min_tokens on (the user chose its rounding for speed); else the GEMV up to
        gemv_max_tokens and the GEMM above."""
        if prefill_dtype == "bf16" and tokens >= self.bf16_min_tokens:
            return "dequant_bf16"
        return "gemv" if tokens <= self.gemv_max_tokens else "gemm"


CROSSOVER = QuantCrossover(gemv_max_tokens=8, bf16_min_tokens=64)
# codegen.greedy_screen takes an lm_head's argmax from this many rows a call: one row is a memory-bound GEMV either
# way (the screen reads the same quants, plus a norm a row), so its cheaper arithmetic buys nothing there (batch-1
# decode 5.86 against 5.82 ms a token, medians of 6 alternating rounds, 2026-12-07 on Zen 4); from two rows its
# third of the GEMV's dot products wins. (A bf16 lm_head screens from one row: its own product reads twice the bytes;
# SmolLM2's, one row after evicting the caches: 2.91 ms bf16 GEMV + argmax against 2.25 screened, 2026-12-07, Zen 4)
SCREEN_MIN_ROWS = 2
# codegen.captured_forward runs steps of up to this many rows as pre-bound kernel calls: decode of small batches,
# where a call's Python (5-6 us) is most of its time; each (rows, sequences) shape keeps its activations
CAPTURED_MAX_TOKENS = 8
# the grid planner.hardware_calibration times the GEMV against the GEMM on (rows of a call)
GEMV_CROSSOVER_GRID = (2, 4, 8, 16, 32, 64, 128, 256, 512)


def crossover_for(gemv_max_tokens: int) -> QuantCrossover:
    """CROSSOVER with a machine's measured GEMV bound (catalog.hardware.HardwareProfile.quant_gemv_max_tokens; 0:
    not measured, CROSSOVER's own)."""
    return replace(CROSSOVER, gemv_max_tokens=gemv_max_tokens) if gemv_max_tokens > 0 else CROSSOVER


def host_crossover() -> QuantCrossover:
    """This machine's crossover, from its stored profile (measured when a plan first calls a model, or by
    `sqlm calibrate`); CROSSOVER where none is stored yet. A model reads it when it is built."""
    from catalog.hardware import KERNEL_RATES, stored_part

    stored = stored_part(KERNEL_RATES) or {}
    return crossover_for(int(stored.get("quant_gemv_max_tokens", 0)))
DENSE_GEMV_MAX_TOKENS = 4  # codegen.linear.TvmDenseLinear (fp32 weights): the TVM GEMV up to here, torch's GEMM above


def bf16_on_torch() -> bool:
    """Whether bf16 weights multiply in torch rather than in codegen's bf16 matmul: as this machine's stored profile
    says where calibration timed both (bf16_matmul_flops 0: torch's GEMM won by TORCH_BF16_MARGIN, or the kernel
    cannot build here), else torch where the CPU has AMX (oneDNN's tile GEMM, ~940 GFLOP/s at 64 x 576 -> 1536 on
    Sapphire Rapids: machine.md). Elsewhere the kernel wins: on a Zen 4 (AVX512-BF16) 410-440 GFLOP/s against
    180-385 for torch at W1's shapes, with AVX2 only (torch limited to it, ONEDNN_MAX_CPU_ISA=AVX2) 179 against 29
    GFLOP/s at 64 x 576 -> 3072."""
    from catalog.hardware import KERNEL_RATES, stored_part
    from codegen.target import host_target

    stored = stored_part(KERNEL_RATES)
    if stored is not None:
        return stored["bf16_matmul_flops"] <= 0
    return host_target().has("amx_bf16")


# torch's bf16 GEMM takes bf16 weights only when it is this much faster than codegen's kernel on its own: in the
# engine each switch between TVM's kernels and torch's costs ~20-45 us and TVM's threads must stop spinning for it
# (BENCHMARKS.md, session 14), which timing the GEMM alone does not see
TORCH_BF16_MARGIN = 1.5
