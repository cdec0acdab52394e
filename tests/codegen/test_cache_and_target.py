"""The on-disk kernel cache and CPU target detection."""
import pytest
import torch

from codegen import build
from codegen.cache import KernelCache
from codegen.target import Target, detect_cpu


def test_second_run_compiles_nothing(tmp_path):
    params = {"hidden": 48, "eps": 1e-6}
    first = KernelCache(tmp_path)
    build.get_kernel("rms_norm", params, cache=first)
    assert (first.stats.num_compiled, first.stats.num_loaded) == (1, 0)

    build.clear_memo()  # as if a new process started
    second = KernelCache(tmp_path)
    kernel = build.get_kernel("rms_norm", params, cache=second)
    assert (second.stats.num_compiled, second.stats.num_loaded) == (0, 1)
    x, w, out = torch.randn(2, 48), torch.randn(48), torch.full((2, 48), float("nan"))
    kernel(x, w, out)
    torch.testing.assert_close(out, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)


def test_other_shapes_get_other_files(tmp_path):
    cache = KernelCache(tmp_path)
    build.get_kernel("rms_norm", {"hidden": 48, "eps": 1e-6}, cache=cache)
    build.get_kernel("rms_norm", {"hidden": 64, "eps": 1e-6}, cache=cache)
    assert cache.stats.num_compiled == 2
    assert len(list(tmp_path.glob("rms_norm-*.so"))) == 2


def test_editing_a_kernel_dependency_changes_its_source_key(tmp_path):
    from dataclasses import replace

    from codegen.kernels import KERNELS

    helper = tmp_path / "helper.py"
    helper.write_text("LANES = 16\n")
    spec = replace(KERNELS["quant_gemv"], depends=(str(helper),))
    before = build.spec_source_digest(spec)
    helper.write_text("LANES = 8\n")
    assert build.spec_source_digest(spec) != before


def test_quantized_kernels_depend_on_the_packed_layout():
    from codegen import packed
    from codegen.kernels import KERNELS

    for name in ("quant_gemv", "quant_gemm", "dequantize"):
        assert packed.__file__ in KERNELS[name].depends


@pytest.mark.parametrize("name", sorted(__import__("codegen.kernels", fromlist=["KERNELS"]).KERNELS))
def test_a_kernels_source_key_covers_every_codegen_module_it_imports(name):
    """An edit to a helper the kernel imports (a threshold in common.py, a layout in packed.py) must rebuild it."""
    import ast
    import importlib.util

    from codegen.kernels import KERNELS

    spec = KERNELS[name]
    tree = ast.parse(open(spec.source_file).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module in ("codegen", "codegen.kernels") for alias in node.names}
    helpers = {m for m in imported if m.startswith(("codegen.kernels.", "codegen.packed")) and importlib.util.find_spec(m)}
    covered = {spec.source_file, *spec.depends}
    assert {importlib.util.find_spec(m).origin for m in helpers} <= covered


def test_detects_sapphire_rapids_features(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16 "
                    "avx512_vnni avx512_fp16 amx_tile amx_bf16 amx_int8\n")
    target = detect_cpu.__wrapped__(str(info))
    assert target.kind == "llvm" and target.mcpu == "sapphirerapids"
    assert target.has("amx_bf16") and target.vector_lanes == 16


def test_detects_avx2_only_cpu(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags : fpu sse avx2 fma f16c\n")
    target = detect_cpu.__wrapped__(str(info))
    assert (target.mcpu, target.vector_lanes, target.has("avx512f")) == ("haswell", 8, False)


def test_target_key_names_what_changes_code():
    assert Target("llvm", "sapphirerapids", ("avx512f",), 2).key != Target("llvm", "sapphirerapids", ("avx512f",), 4).key
    assert Target("cuda", "sm_90").key != Target("cuda", "sm_80").key


def test_detects_arm_dot_product_extension(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nFeatures : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n")
    target = detect_cpu.__wrapped__(str(info), machine="aarch64")
    assert (target.arch, target.features, target.vector_lanes) == ("aarch64", ("neon", "dotprod"), 4)
    assert target.tvm_target().attrs["mtriple"] == "aarch64-linux-gnu"


def test_a_kernel_built_for_one_level_is_never_loaded_for_another(tmp_path):
    from codegen.target import level

    params = {"hidden": 48, "eps": 1e-6}
    cache = KernelCache(tmp_path)
    build.get_kernel("rms_norm", params, level("x86-64-v3"), cache=cache)
    build.clear_memo()
    build.get_kernel("rms_norm", params, level("avx512-vnni"), cache=cache)
    assert (cache.stats.num_compiled, cache.stats.num_loaded) == (2, 0)
    assert len(list(tmp_path.glob("rms_norm-*.so"))) == 2


def test_forced_level_must_run_here(monkeypatch):
    from codegen.target import host_target

    if detect_cpu().arch != "x86_64" or not detect_cpu().has("avx2"):
        pytest.skip("forces the x86-64-v3 level: needs an x86-64 host with AVX2")
    host_target.cache_clear()
    monkeypatch.setenv("SQLM_CPU_TARGET", "aarch64-dotprod")
    try:
        with pytest.raises(ValueError, match="SQLM_CPU_TARGET='aarch64-dotprod' needs"):
            host_target()
        monkeypatch.setenv("SQLM_CPU_TARGET", "x86-64-v3")
        assert host_target().features == ("avx2", "fma", "f16c")
    finally:
        monkeypatch.delenv("SQLM_CPU_TARGET")
        host_target.cache_clear()
