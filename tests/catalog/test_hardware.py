"""The stored hardware profile: reused while it has every figure the cost model reads, measured again when not."""
from __future__ import annotations

from dataclasses import asdict, replace

import catalog.hardware as hardware
from catalog.hardware import HardwareProfile, fingerprint, hardware_profile, measure_bf16_prefill
from catalog.store import Catalog

MEASURED = HardwareProfile(copy_bandwidth=6.2e9, fp32_flops=3.4e10, bf16_flops=1.1e11, op_overhead_s=8e-6, threads=2,
                           description="fresh", quant_gemv_rate_t1=3e10, quant_dequant_bf16_rate=2.5e9,
                           quant_bf16_gemm_rate=1.5e11)


def test_a_profile_stored_before_the_bf16_prefill_rates_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "measure", lambda: MEASURED)
    catalog = Catalog(tmp_path / "home")
    old = asdict(replace(MEASURED, description="stored by an older sqlm"))
    del old["quant_dequant_bf16_rate"], old["quant_bf16_gemm_rate"]
    catalog.put_hardware_profile(fingerprint(), old)
    assert hardware_profile(catalog) == MEASURED
    assert catalog.hardware_profile(fingerprint())["quant_bf16_gemm_rate"] == 1.5e11
    catalog.close()


def test_a_complete_stored_profile_is_reused(tmp_path, monkeypatch):
    catalog = Catalog(tmp_path / "home")
    catalog.put_hardware_profile(fingerprint(), asdict(MEASURED))
    monkeypatch.setattr(hardware, "measure", lambda: (_ for _ in ()).throw(AssertionError("measured again")))
    assert hardware_profile(catalog) == MEASURED
    catalog.close()


def test_the_bf16_prefill_path_is_timed():
    rates = measure_bf16_prefill(rows=256, cols=128, copies=2, tokens=64)
    assert rates["quant_dequant_bf16_rate"] > 0 and rates["quant_bf16_gemm_rate"] > 0
