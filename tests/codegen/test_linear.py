"""TVM-backed Linear layers against the torch ones, on both sides of the GEMV threshold."""
import pytest
import torch

from catalog.quant import quantize
from codegen.linear import TvmDenseLinear, TvmQuantizedLinear
from operators.linear import DenseLinear, QuantizedLinear


def assert_fp32_close(out, expected):
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("tokens", [1, 3, 4, 5, 17])
def test_quantized_linear_matches_dequantize_then_reference(qtype, tokens):
    torch.manual_seed(tokens)
    weight = quantize(qtype, torch.randn(96, 160))
    bias = torch.randn(96)
    ours = TvmQuantizedLinear(weight, bias, gemv_max_tokens=4)
    x = torch.randn(tokens, 160)
    assert (ours.in_features, ours.out_features, ours.weight_format, ours.kernel) == (160, 96, qtype, "tvm")
    assert_fp32_close(ours(x), QuantizedLinear(weight, bias)(x))


def test_quantized_linear_bf16_prefill_is_within_bf16_error():
    weight = quantize("Q4_1", torch.randn(64, 128))
    ours = TvmQuantizedLinear(weight, gemv_max_tokens=1, prefill_dtype="bf16")
    x = torch.randn(9, 128)
    expected = QuantizedLinear(weight)(x)
    # bf16 keeps 8 mantissa bits: relative error per product ~4e-3, summed over K=128 terms
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=3e-2 * expected.abs().max().item())


@pytest.mark.parametrize("tokens", [1, 2, 6])
def test_dense_linear_matches_torch(tokens):
    weight, x = torch.randn(48, 80), torch.randn(tokens, 80)
    assert_fp32_close(TvmDenseLinear(weight, gemv_max_tokens=4)(x), DenseLinear(weight)(x))


def test_gemv_rows_do_not_depend_on_the_batch():
    weight = quantize("Q4_1", torch.randn(64, 96))
    layer = TvmQuantizedLinear(weight, gemv_max_tokens=8)
    x = torch.randn(8, 96)
    batched = layer(x)
    for i in range(8):
        assert torch.equal(layer(x[i : i + 1]), batched[i : i + 1])


def test_dense_linear_accepts_an_unaligned_weight_view():
    # F32 weights can be views into a memory-mapped GGUF file, 32-byte aligned at best.
    storage = torch.randn(48 * 80 + 4)
    weight = storage[4:].view(48, 80)
    x = torch.randn(1, 80)
    assert_fp32_close(TvmDenseLinear(weight, gemv_max_tokens=4)(x), DenseLinear(weight)(x))
