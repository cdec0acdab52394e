"""The kernel set: the runtime's kernels by name, per device; the CUDA cases run where a GPU exists."""
from __future__ import annotations

import pytest
import torch

from codegen import ops
from codegen.kernel_set import OPS, gpu_available, kernel_set
from operators import tensor_ops


def test_the_cpu_set_names_its_kernels_and_refuses_unknown_ones():
    kernels = kernel_set("cpu")
    assert kernels.device == "cpu" and kernels.target.kind == "llvm"
    assert set(OPS) >= {"rms_norm", "rope_qkv", "paged_attention"}
    with pytest.raises(ValueError, match="no kernel named 'gelu'"):
        kernels.op("gelu")
    with pytest.raises(ValueError, match="device must be one of"):
        kernel_set("tpu")


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    kernel_set.cache_clear()
    with pytest.raises(RuntimeError, match="needs a GPU"):
        kernel_set("cuda")


def _rms_case(device: str):
    torch.manual_seed(0)
    x, w = torch.randn(5, 576), torch.randn(576)
    return x.to(device), w.to(device), tensor_ops.rms_norm(x, w, 1e-5)


def test_the_cpu_sets_rms_norm_matches_torch():
    x, w, want = _rms_case("cpu")
    torch.testing.assert_close(kernel_set("cpu").op("rms_norm")(x, w, 1e-5), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not gpu_available(), reason="no GPU here: the CUDA kernels compile (tests/codegen/test_cuda.py) "
                                                 "but cannot run")
def test_the_cuda_sets_kernels_run_on_the_gpu_and_match_the_cpu():
    kernels = kernel_set("cuda")
    x, w, want = _rms_case("cuda")
    torch.testing.assert_close(kernels.op("rms_norm")(x, w, 1e-5).cpu(), want, rtol=1e-4, atol=1e-4)
    gate, up = torch.randn(3, 1536), torch.randn(3, 1536)
    torch.testing.assert_close(kernels.op("silu_mul")(gate.cuda(), up.cuda()).cpu(), ops.silu_mul(gate, up),
                               rtol=1e-4, atol=1e-4)
