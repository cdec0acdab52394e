"""Every kernel's CUDA twin: generated here, compiled with nvcc where nvcc exists, run where a GPU exists."""
import shutil
import subprocess

import pytest
import torch

from codegen.build import cuda_source
from codegen.kernels import KERNELS

PARAMS = {
    "add_rms_norm": {"hidden": 576, "eps": 1e-5, "y_dtype": "bf16", "out_dtype": "bf16"},
    "bf16_matmul": {"n": 40, "k": 96},
    "dense_matmul": {"n": 64, "k": 96},
    "dequantize": {"qtype": "Q4_1", "n": 64, "k": 96},
    "paged_attention": {"num_q_heads": 9, "num_kv_heads": 3, "head_dim": 64, "block_size": 16},
    "quant_gemm": {"qtype": "Q4_1", "n": 72, "k": 96},
    "quant_gemv": {"qtype": "Q4_1", "n": 64, "k": 96},
    "rms_norm": {"hidden": 576, "eps": 1e-5},
    "rope_qkv": {"num_q_heads": 9, "num_kv_heads": 3, "head_dim": 64, "block_size": 16, "kv_dtype": "bf16"},
    "silu_mul": {"ffn": 1536},
}


def test_every_kernel_has_cuda_parameters():
    assert set(PARAMS) == set(KERNELS)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_cuda_source_compiles_with_nvcc(name, tmp_path):
    source = cuda_source(name, PARAMS[name], arch="sm_90")
    assert "__global__" in source
    (tmp_path / "kernel.cu").write_text(source)
    result = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-o", str(tmp_path / "kernel.cubin"),
                             str(tmp_path / "kernel.cu")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("name", ["quant_gemv", "quant_gemm", "dequantize"])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_other_quant_types_compile_with_nvcc(name, qtype, tmp_path):
    source = cuda_source(name, {"qtype": qtype, "n": 40, "k": 64}, arch="sm_90")
    (tmp_path / "kernel.cu").write_text(source)
    result = subprocess.run(["nvcc", "-arch=sm_90", "-cubin", "-o", str(tmp_path / "kernel.cubin"),
                             str(tmp_path / "kernel.cu")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_rms_norm_runs_on_gpu():
    from codegen.build import get_kernel
    from codegen.target import cuda
    from operators.tensor_ops import rms_norm

    x, w = torch.randn(3, 576, device="cuda"), torch.randn(576, device="cuda")
    out = torch.full_like(x, float("nan"))
    get_kernel("rms_norm", PARAMS["rms_norm"], target=cuda("sm_90"))(x, w, out)
    torch.testing.assert_close(out.cpu(), rms_norm(x.cpu(), w.cpu(), 1e-5), rtol=1e-5, atol=1e-5)
