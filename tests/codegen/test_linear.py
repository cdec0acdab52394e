"""TVM-backed Linear layers against the torch ones, on both sides of the GEMV threshold."""
import pytest
import torch

from catalog.quant import quantize
from codegen.linear import TvmBf16Linear, TvmDenseLinear, TvmQuantizedLinear
from codegen.quant_crossover import PATHS, QuantCrossover
from operators.linear import DenseLinear, QuantizedLinear


def assert_fp32_close(out, expected):
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("tokens", [1, 3, 4, 5, 17, 40])
def test_quantized_linear_matches_dequantize_then_reference(qtype, tokens):
    torch.manual_seed(tokens)
    weight = quantize(qtype, torch.randn(96, 160))
    bias = torch.randn(96)
    ours = TvmQuantizedLinear(weight, bias, crossover=QuantCrossover(gemv_max_tokens=4, bf16_min_tokens=32))
    x = torch.randn(tokens, 160)
    assert (ours.in_features, ours.out_features, ours.weight_format, ours.kernel) == (160, 96, qtype, "tvm")
    assert_fp32_close(ours(x), QuantizedLinear(weight, bias)(x))


def test_quantized_linear_picks_its_kernel_by_batch_size():
    crossover = QuantCrossover(gemv_max_tokens=4, bf16_min_tokens=32)
    assert [crossover.path(t) for t in (1, 4, 5, 32, 500)] == ["gemv", "gemv", "gemm", "gemm", "gemm"]
    assert [crossover.path(t, "bf16") for t in (4, 31, 32)] == ["gemv", "gemm", "dequant_bf16"]


@pytest.mark.parametrize("path, bf16_torch", [(p, False) for p in PATHS] + [("dequant_bf16", True)])
def test_every_path_computes_the_same_linear(path, bf16_torch):
    weight = quantize("Q4_0", torch.randn(40, 96))
    x = torch.randn(7, 96)
    out = TvmQuantizedLinear(weight, prefill_dtype="bf16", bf16_torch=bf16_torch).run(path, x)
    expected = QuantizedLinear(weight)(x)
    if path == "dequant_bf16":
        # bf16 keeps 8 mantissa bits: relative error per product ~4e-3, summed over K=96 terms
        torch.testing.assert_close(out, expected, rtol=0, atol=3e-2 * expected.abs().max().item())
    else:
        assert_fp32_close(out, expected)


@pytest.mark.parametrize("tokens", [1, 2, 6])
def test_dense_linear_matches_torch(tokens):
    weight, x = torch.randn(48, 80), torch.randn(tokens, 80)
    assert_fp32_close(TvmDenseLinear(weight, gemv_max_tokens=4)(x), DenseLinear(weight)(x))


@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_rows_do_not_depend_on_the_batch(path):
    weight = quantize("Q4_1", torch.randn(64, 96))
    layer = TvmQuantizedLinear(weight)
    x = torch.randn(8, 96)
    batched = layer.run(path, x)
    for i in range(8):
        assert torch.equal(layer.run(path, x[i : i + 1]), batched[i : i + 1])


def test_dense_linear_accepts_an_unaligned_weight_view():
    # F32 weights can be views into a memory-mapped GGUF file, 32-byte aligned at best.
    storage = torch.randn(48 * 80 + 4)
    weight = storage[4:].view(48, 80)
    x = torch.randn(1, 80)
    assert_fp32_close(TvmDenseLinear(weight, gemv_max_tokens=4)(x), DenseLinear(weight)(x))


def test_linear_takes_fp32_or_bf16_input_and_adds_its_bias_like_torchs():
    weight, bias, x = torch.randn(100, 64).to(torch.bfloat16), torch.randn(100), torch.randn(5, 64)
    ours, torchs = TvmBf16Linear(weight, bias), DenseLinear(weight, bias)
    for given in (x, x.to(torch.bfloat16)):
        out = ours(given)
        assert out.dtype == torch.bfloat16 and out.shape == (5, 100)
        torch.testing.assert_close(out.float(), torchs(given).float(), rtol=2 ** -7, atol=1e-2)
