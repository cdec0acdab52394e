"""Every kernel on every CPU level (codegen.target.LEVELS): the levels this host executes run the
kernel tests' own examples against their references (an AVX-512 host runs the AVX2 code too);
the others are cross-compiled, so CI on any machine checks that every target builds."""
import re
import sys
from pathlib import Path

import pytest

from codegen.build import compile_kernel
from codegen.kernels import KERNELS
from codegen.target import LEVELS, detect_cpu, host_target, level, runnable_levels

sys.path.insert(0, str(Path(__file__).parent))  # the kernel tests' own examples, reused below
import test_greedy_screen as screen  # noqa: E402
import test_kernels as kernels  # noqa: E402
import test_quant_kernels as quant  # noqa: E402
from test_cuda import PARAMS  # noqa: E402

RUNNABLE = runnable_levels()
NOT_RUNNABLE = [name for name in LEVELS if name not in RUNNABLE]
# the level that is this very host: every other kernel test already runs its code
OTHER_RUNNABLE = [name for name in RUNNABLE if level(name) != host_target()]

# One or two examples of every kernel test, at shapes that reach each code path's edges
# (partial row tiles, the thread pool, token tails).
EXAMPLES = [
    (kernels.test_dense_matmul, dict(n=37, k=160, tokens=3)),
    (kernels.test_bf16_matmul_matches_fp32_arithmetic, dict(n=960, k=576, tokens=9, out_dtype="bf16")),
    (kernels.test_bf16_matmul_token_does_not_depend_on_its_batch, dict()),
    (kernels.test_rms_norm, dict(tokens=70, hidden=40, out_dtype="bf16")),
    (kernels.test_add_rms_norm_updates_the_residual_in_place, dict(tokens=5, hidden=77, y_dtype="bf16",
                                                                   out_dtype="fp32")),
    (kernels.test_silu_mul_reads_strided_halves, dict(tokens=3, ffn=37, dtype="fp32")),
    (kernels.test_rope_qkv_rotates_q_and_writes_k_v_into_their_slots,
     dict(tokens=7, heads=3, kv_heads=1, head_dim=10, block_size=4, x_dtype="fp32", kv_dtype="bf16")),
    (kernels.test_paged_decode_attention, dict(hq=9, hkv=3, d=64, bs=16, kv_dtype="fp32")),
    (kernels.test_paged_prefill_attention_is_causal_over_cached_prefix, dict(hq=6, hkv=2, d=16, bs=5,
                                                                               kv_dtype="bf16")),
    (quant.test_dequantize_is_exact, dict(qtype="Q4_1", n=37, out_dtype="bfloat16")),
    (quant.test_dequantize_into_the_bf16_matmuls_pairs_is_exact, dict(qtype="Q8_0", n=100)),
    (quant.test_gemv_activation_split_handles_zero_blocks_outliers_and_scale, dict(qtype="Q8_0")),
    (quant.test_gemv_integer_sums_stay_exact_at_the_largest_quants_and_activations, dict(qtype="Q8_0")),
    (quant.test_gemv_integer_sums_stay_exact_at_the_largest_quants_and_activations, dict(qtype="Q4_1")),
    (quant.test_token_does_not_depend_on_its_batch, dict(kernel="quant_gemm", qtype="Q4_1")),
    (screen.test_bounds_hold_for_every_row_and_tile, dict(qtype="Q8_0", rows=37, cols=64)),  # 8-bit quants as nibbles
    (screen.test_bounds_hold_for_every_row_and_tile, dict(qtype="Q4_1", rows=1000, cols=128)),
    (screen.test_bounds_hold_where_every_rounding_error_points_the_same_way, dict(qtype="Q4_1")),
] + [(quant.test_matches_dequantized_reference, dict(kernel=kernel, qtype=qtype, n=n, k=k, token_counts=tokens))
     for kernel, qtype, (n, k, tokens) in [
         ("quant_gemv", "Q4_1", (1000, 576, (4,))),  # on the thread pool
         ("quant_gemv", "Q4_0", (37, 160, (1, 3))),  # a partial row tile
         ("quant_gemv", "Q8_0", (37, 160, (3,))),
         ("quant_gemm", "Q4_1", (200, 1536, (90,))),  # a partial panel, two token blocks, a token tail
         ("quant_gemm", "Q4_0", (37, 160, (3, 7))),
         ("quant_gemm", "Q8_0", (37, 160, (3,)))]]


def example_id(example) -> str:
    test, params = example
    return f"{test.__name__.removeprefix('test_')}[{'-'.join(str(v) for v in params.values())}]"


def test_this_host_has_a_tvm_path():
    assert RUNNABLE, f"no CPU level of {tuple(LEVELS)} runs on this host ({detect_cpu()})"
    assert host_target().can_run_on(detect_cpu())


# avx512-vnni (Cascade Lake) is avx512 (Skylake) plus VNNI: only the kernels built on integer dot products
# (codegen.kernels.int_dot: the quantized GEMV) compile differently there
INT_DOT_ONLY = {"avx512-vnni"}
USES_INT_DOT = (quant.test_gemv_activation_split_handles_zero_blocks_outliers_and_scale,
                quant.test_gemv_integer_sums_stay_exact_at_the_largest_quants_and_activations,
                screen.test_bounds_hold_for_every_row_and_tile,
                screen.test_bounds_hold_where_every_rounding_error_points_the_same_way)


def uses_int_dot(example) -> bool:
    test, params = example
    return test in USES_INT_DOT or params.get("kernel") == "quant_gemv"


LEVEL_EXAMPLES = [(example, name) for name in OTHER_RUNNABLE for example in EXAMPLES
                  if name not in INT_DOT_ONLY or uses_int_dot(example)]


@pytest.mark.parametrize("example, cpu_level", LEVEL_EXAMPLES, ids=[f"{example_id(e)}-{n}" for e, n in LEVEL_EXAMPLES])
def test_kernel_runs_correctly_at_every_level_this_host_executes(example, cpu_level):
    test, params = example
    test(**params, target=level(cpu_level))


@pytest.mark.parametrize("cpu_level", NOT_RUNNABLE)
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_kernel_cross_compiles_for_the_levels_this_host_cannot_run(name, cpu_level):
    asm = assembly(compile_kernel(KERNELS[name], PARAMS[name], level(cpu_level)))
    aarch64_registers = re.search(r"\s[xw]\d{1,2}[,\s]", asm) is not None
    x86_registers = re.search(r"%(r[a-z0-9]+|e[a-z]{2}|[xyz]mm\d+)", asm) is not None
    assert (aarch64_registers, x86_registers) == ((True, False) if cpu_level.startswith("aarch64") else (False, True))
    if cpu_level == "x86-64-v3":
        assert "zmm" not in asm  # no AVX-512 register on an AVX2 machine


# The instruction each level's quantized GEMV is built around.
DOT_INSTRUCTION = {"x86-64-v3": "vpmaddubsw", "avx512": "vpmaddubsw", "avx512-vnni": "vpdpbusd",
                   "sapphirerapids": "vpdpbusd", "aarch64": "mul", "aarch64-dotprod": "sdot"}


@pytest.mark.parametrize("cpu_level", list(LEVELS))
def test_quantized_gemv_uses_each_levels_dot_product(cpu_level):
    asm = assembly(compile_kernel(KERNELS["quant_gemv"], PARAMS["quant_gemv"], level(cpu_level)))
    assert f"\t{DOT_INSTRUCTION[cpu_level]}\t" in asm


def assembly(executable) -> str:
    module = executable.mod
    return (module.imports[0] if module.imports else module).inspect_source("asm")


def test_levels_name_their_instruction_sets():
    assert level("x86-64-v3").can_run_on(level("avx512-vnni"))
    assert not level("avx512-vnni").can_run_on(level("x86-64-v3"))
    assert not level("aarch64").can_run_on(level("x86-64-v3"))
    keys = {level(name).key for name in LEVELS}
    assert len(keys) == len(LEVELS)  # a kernel built for one level never answers for another
