"""GGUF block formats: sqlm's torch dequantization equals the gguf package's reference, bit for bit."""
import numpy as np
import pytest
import torch

from catalog.quant import QuantizedTensor, dequantize_blocks, quantize


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
@pytest.mark.parametrize("shape", [(1, 32), (7, 96), (33, 576)])
def test_dequantize_matches_gguf_reference(qtype, shape):
    import gguf

    rng = np.random.default_rng(sum(shape))
    data = rng.standard_normal(shape).astype(np.float32)
    raw = gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype])
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(shape)
    ours = dequantize_blocks(qtype, torch.from_numpy(np.array(raw, dtype=np.uint8)), shape[1])
    assert torch.equal(ours, torch.from_numpy(expected.astype(np.float32)))


@pytest.mark.parametrize("qtype,max_rel_err", [("Q8_0", 0.01), ("Q4_0", 0.15), ("Q4_1", 0.1)])
def test_quantize_round_trip_error_is_bounded(qtype, max_rel_err):
    w = torch.randn(16, 128)
    back = quantize(qtype, w).dequantize()
    rel = (back - w).abs().max() / w.abs().max()
    assert rel < max_rel_err


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_without_the_min_only_q4_1_changes_by_one_constant_a_block(qtype):
    torch.manual_seed(0)
    q = quantize(qtype, torch.randn(3, 64) + 0.5)
    full, scaled = q.dequantize(), dequantize_blocks(qtype, q.blocks, 64, with_min=False)
    shift = (full - scaled).view(3, 2, 32)
    if qtype == "Q4_1":
        assert torch.equal(shift, shift[..., :1].expand(-1, -1, 32)) and (shift != 0).any()
    else:
        assert torch.equal(full, scaled)


def test_select_rows_permutes_whole_rows():
    q = quantize("Q4_1", torch.randn(6, 64))
    order = torch.tensor([5, 0, 3, 1, 4, 2])
    assert torch.equal(q.select_rows(order).dequantize(), q.dequantize()[order])


def test_bad_block_shape_is_rejected():
    with pytest.raises(ValueError, match="Q4_1 blocks have shape"):
        QuantizedTensor("Q4_1", torch.zeros(2, 19, dtype=torch.uint8), 2, 32)
    with pytest.raises(ValueError, match="unsupported quantization type"):
        QuantizedTensor("Q5_K", torch.zeros(2, 20, dtype=torch.uint8), 2, 32)
