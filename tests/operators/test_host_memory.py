"""operators.host_memory: the KV pool's lazily zero-filled buffers and the packed weights' huge-page copies."""
import pytest
import torch

from operators import host_memory


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_lazy_zeros_are_zero_writable_and_page_aligned(dtype):
    t = host_memory.lazy_zeros((3, 5, 7), dtype)
    assert t.shape == (3, 5, 7) and t.dtype == dtype and t.data_ptr() % 4096 == 0
    assert not t.any()
    t[1, 2, 3] = 1
    assert t.sum().item() == 1


def test_resident_copies_values_aligned_and_independent():
    sources = [torch.randn(17, 3), torch.arange(1000, dtype=torch.uint8).view(10, 100),
               torch.randn(4, 6).to(torch.float16), torch.randn(1 << 21)]  # the last one spans a huge page
    copies = [host_memory.resident(s) for s in sources]
    for source, copy in zip(sources, copies):
        assert copy.dtype == source.dtype and copy.shape == source.shape
        assert torch.equal(copy, source) and copy.data_ptr() % 64 == 0 and copy.is_contiguous()
    sources[0].zero_()  # a copy, not a view
    assert copies[0].abs().sum() > 0


def test_resident_buffers_do_not_overlap():
    a, b = host_memory.resident(torch.ones(100)), host_memory.resident(torch.full((100,), 2.0))
    assert torch.equal(a, torch.ones(100)) and torch.equal(b, torch.full((100,), 2.0))


def test_resident_takes_non_contiguous_input():
    source = torch.randn(8, 6).t()
    assert torch.equal(host_memory.resident(source), source)
