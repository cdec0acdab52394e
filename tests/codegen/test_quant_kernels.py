"""The quantized-weight kernels against catalog.quant's dequantization on fresh random inputs.

Outputs are filled with NaN before each run, so an element a kernel fails to write fails the
comparison. Tolerances:
  - quant_gemv, quant_gemm: the fp32 matmul tolerance, |err| <= 1e-5 * max(1, max|ref|) + 1e-5 * |ref|.
    The GEMM differs from the reference in summation order and a fused d*q+m; the GEMV splits
    x into three int8 pieces, exact to ~1e-7 of each block's largest |x|;
  - dequantize: exact (same arithmetic on the same f16 scales; bf16 output rounded as torch rounds).
"""
import pytest
import torch

from catalog.quant import quantize
from codegen.build import get_kernel
from codegen.packed import pack
from operators import tensor_ops as ref

QTYPES = ["Q4_1", "Q4_0", "Q8_0"]
# (N, K, token counts). Each (N, K) compiles once (tokens are a symbolic dimension, so one kernel serves
# every count): partial last row tiles (37, 200), odd tile counts (3, 5), one block and one tile (16 x 32),
# K chunks of 32/96/128; token counts covering the GEMM's register-tile tails, 64 tokens, and 90 at K=1536:
# more than its token block there (two passes).
SHAPES = [(37, 160, (1, 3, 7)), (48, 64, (2, 16)), (16, 32, (4,)), (80, 128, (5, 9)), (96, 576, (5, 64)),
          (200, 1536, (6, 13, 90)),
          (1000, 576, (4,))]  # enough work to run on the thread pool (quant_common.PARALLEL_MIN_WORK)


def poisoned(*shape):
    return torch.full(shape, float("nan"))


def assert_fp32_close(out, expected):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * scale)


def run(kernel_name, weight, x, target=None):
    out = poisoned(x.shape[0], weight.rows)
    get_kernel(kernel_name, {"qtype": weight.qtype, "n": weight.rows, "k": weight.cols}, target)(
        x, *pack(weight).tensors, out)
    return out


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("kernel", ["quant_gemv", "quant_gemm"])
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n,k,token_counts", SHAPES)
def test_matches_dequantized_reference(kernel, qtype, n, k, token_counts, target=None):
    weight = quantize(qtype, torch.randn(n, k))
    for tokens in token_counts:
        x = torch.randn(tokens, k)
        assert_fp32_close(run(kernel, weight, x, target), ref.linear(x, weight.dequantize()))


@pytest.mark.parametrize("qtype", QTYPES)
def test_gemv_activation_split_handles_zero_blocks_outliers_and_scale(qtype, target=None):
    weight = quantize(qtype, torch.randn(48, 64))  # the shape of SHAPES' odd tile count: no extra compile
    x = torch.randn(4, 64)
    x[0, :32] = 0  # a block with max|x| = 0
    x[1, 5] = 300.0  # one outlier dominating its block's scale
    x[2] *= 1e4
    x[3] *= 1e-6
    out = run("quant_gemv", weight, x, target)
    expected = ref.linear(x, weight.dequantize())
    for row in range(4):  # each token at its own scale
        assert_fp32_close(out[row], expected[row])


@pytest.mark.parametrize("qtype", QTYPES)
def test_gemv_integer_sums_stay_exact_at_the_largest_quants_and_activations(qtype, target=None):
    """Every quant at its largest (4-bit 15, Q8_0's 127 as the nibbles 15 and 15) against activations whose int8
    piece is +-127 throughout: the most a block's int16 pair sums reach (codegen.kernels.int_dot, 30480)."""
    w = torch.ones(48, 64)
    w[:, ::32] = 0 if qtype == "Q4_1" else 1  # Q4_1: min 0, the other 31 quants of a block 15
    w[1::2] *= -1  # Q4_0 and Q8_0: rows of the smallest quants too
    weight = quantize(qtype, w)
    x = torch.ones(2, 64)
    x[1] = -1
    assert_fp32_close(run("quant_gemv", weight, x, target), ref.linear(x, weight.dequantize()))


@pytest.mark.parametrize("kernel", ["quant_gemv", "quant_gemm"])
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_token_does_not_depend_on_its_batch(kernel, qtype, target=None):
    weight = quantize(qtype, torch.randn(80, 128))
    packed = pack(weight)
    kernel_fn = get_kernel(kernel, {"qtype": qtype, "n": 80, "k": 128}, target)
    x = torch.randn(19, 128)
    together = poisoned(19, 80)
    kernel_fn(x, *packed.tensors, together)
    for size in (1, 2, 3, 5, 6, 7, 13):
        part = poisoned(size, 80)
        kernel_fn(x[-size:].contiguous(), *packed.tensors, part)
        assert torch.equal(part, together[-size:])


@pytest.mark.parametrize("qtype", QTYPES)
def test_packing_keeps_the_quantized_bytes(qtype):
    weight = quantize(qtype, torch.randn(64, 96))
    assert pack(weight).nbytes == weight.nbytes


@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n", [37, 64])
def test_dequantize_is_exact(qtype, n, out_dtype, target=None):
    weight = quantize(qtype, torch.randn(n, 96) * 3)
    dtype = getattr(torch, out_dtype)
    out = poisoned(96, n).to(dtype)
    get_kernel("dequantize", {"qtype": qtype, "n": n, "k": 96, "out_dtype": out_dtype}, target)(*pack(weight).tensors, out)
    assert torch.equal(out.T, weight.dequantize().to(dtype))  # bf16: round to nearest even, as torch


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n", [37, 100])  # a partial row tile; a partial block of the bf16 matmul (zero rows)
def test_dequantize_into_the_bf16_matmuls_pairs_is_exact(qtype, n, target=None):
    from codegen.kernels import bf16_matmul
    from codegen.target import host_target

    weight = quantize(qtype, torch.randn(n, 96) * 3)
    expected = bf16_matmul.pack(weight.dequantize().to(torch.bfloat16), bf16_matmul.tiles(target or host_target())[0])
    out = torch.full(expected.shape, 0x7FC1, dtype=torch.int32).to(torch.uint16)  # a NaN's bits
    get_kernel("dequantize", {"qtype": qtype, "n": n, "k": 96, "out_dtype": "bfloat16", "layout": "pairs"},
               target)(*pack(weight).tensors, out)
    # as values: rows past n are zero blocks, which Q4_0 / Q8_0 dequantize to -0.0 (0 * (0 - offset))
    assert torch.equal(out.view(torch.bfloat16).float(), expected.view(torch.bfloat16).float())
