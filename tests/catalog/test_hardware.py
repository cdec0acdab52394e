"""The hardware profile belongs to the machine: stored once under the cache directory, shared by every catalog,
each part measured when first needed and again when a figure is missing."""
from __future__ import annotations

from dataclasses import asdict, replace

import pytest

import planner.hardware_calibration as calibration
from catalog.hardware import CEILINGS, KERNEL_RATES, TIER_RATES, HardwareProfile, fingerprint, store_part, stored_part
from planner.hardware_calibration import hardware_profile, measure_bf16_prefill

MEASURED = HardwareProfile(copy_bandwidth=6.2e9, fp32_flops=3.4e10, bf16_flops=1.1e11, op_overhead_s=8e-6, threads=2,
                           description="fresh", quant_gemv_rate_t1=3e10, quant_dequant_bf16_rate=2.5e9,
                           quant_bf16_gemm_rate=1.5e11, kv_host_restore_rate=3.5e8, kv_disk_restore_rate=5.8e8)


def never(*_):
    raise AssertionError("measured again")


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """This test's machine cache is empty; measuring yields MEASURED and is counted per part."""
    monkeypatch.setenv("SQLM_CACHE_DIR", str(tmp_path / "cache"))
    counts = {"ceilings": 0, "kernels": 0, "tiers": 0}

    def ceilings():
        counts["ceilings"] += 1
        return {k: v for k, v in asdict(MEASURED).items() if k in CEILINGS}

    def kernels():
        counts["kernels"] += 1
        return {k: v for k, v in asdict(MEASURED).items() if k in KERNEL_RATES}
    def tiers():
        counts["tiers"] += 1
        return {k: v for k, v in asdict(MEASURED).items() if k in TIER_RATES}
    monkeypatch.setattr(calibration, "measure_ceilings", ceilings)
    monkeypatch.setattr(calibration, "measure_kernel_rates", kernels)
    monkeypatch.setattr(calibration, "measure_tier_rates", tiers)
    return counts


def test_measured_once_per_machine_then_read_back(measured, monkeypatch):
    assert hardware_profile() == MEASURED
    monkeypatch.setattr(calibration, "measure_ceilings", never)
    monkeypatch.setattr(calibration, "measure_kernel_rates", never)
    monkeypatch.setattr(calibration, "measure_tier_rates", never)
    assert hardware_profile() == MEASURED  # any catalog, any process: the machine's file
    assert measured == {"ceilings": 1, "kernels": 1, "tiers": 1}


def test_a_plan_without_model_calls_measures_no_kernels(measured):
    profile = hardware_profile(with_kernels=False)
    assert profile.copy_bandwidth == MEASURED.copy_bandwidth and profile.quant_gemv_rate_t1 == 0
    assert measured == {"ceilings": 1, "kernels": 0, "tiers": 0}
    assert hardware_profile() == MEASURED  # the first model call measures the kernels, the ceilings are kept
    assert measured == {"ceilings": 1, "kernels": 1, "tiers": 1}


def test_a_profile_stored_before_a_figure_existed_is_measured_again(measured):
    old = asdict(replace(MEASURED, description="stored by an older sqlm"))
    del old["quant_dequant_bf16_rate"], old["quant_bf16_gemm_rate"]
    store_part(old)
    assert hardware_profile().quant_bf16_gemm_rate == 1.5e11
    assert measured == {"ceilings": 0, "kernels": 1, "tiers": 0}  # the ceilings and tier rates were complete
    assert stored_part(KERNEL_RATES)["quant_bf16_gemm_rate"] == 1.5e11


def test_kernel_rates_timed_on_other_kernel_code_are_measured_again(measured, monkeypatch):
    hardware_profile()
    monkeypatch.setattr(calibration, "kernel_code_stamp", lambda: {"kernel_code": "an edited quant_gemv"})
    hardware_profile()
    assert measured == {"ceilings": 1, "kernels": 2, "tiers": 1}  # only the kernels' part depends on their code
    assert stored_part(KERNEL_RATES, stamp={"kernel_code": "an edited quant_gemv"}) is not None
    hardware_profile()
    assert measured["kernels"] == 2


def test_profiles_are_keyed_by_machine(measured):
    store_part(asdict(MEASURED), key="another CPU|64 cores")
    hardware_profile()
    assert measured == {"ceilings": 1, "kernels": 1, "tiers": 1}  # another machine's profile is not this one's
    assert stored_part(CEILINGS, key=fingerprint())["description"] == "fresh"


def test_an_unreadable_store_is_measured_again(measured, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "hardware_profiles.json").write_text("{not json")
    assert hardware_profile() == MEASURED


def test_the_bf16_prefill_path_is_timed():
    rates = measure_bf16_prefill(rows=256, cols=128, copies=2, tokens=64)
    assert rates["quant_dequant_bf16_rate"] > 0 and rates["quant_bf16_gemm_rate"] > 0


@pytest.mark.parametrize("gemv, gemm, expected", [
    ({}, {}, 512),  # the GEMV never slower: the whole grid
    ({16: 2.0}, {16: 1.0}, 8),  # loses at 16: 8
    ({2: 2.0}, {2: 1.0}, 2),  # loses at once: the grid's first (decode of one row never reaches the GEMM)
    ({32: 2.0, 128: 0.5}, {32: 1.0, 128: 1.0}, 16),  # a win past the first loss does not count: noise
])
def test_gemv_crossover_is_where_the_gemv_first_loses(gemv, gemm, expected):
    times = {"gemv": gemv, "gemm": gemm}
    assert calibration.gemv_crossover(lambda kernel, tokens: times[kernel].get(tokens, 1.0), "gemv", "gemm") == expected


def test_a_model_built_here_takes_the_stored_crossover(machine_profile):
    from codegen.quant_crossover import CROSSOVER, host_crossover

    assert host_crossover() == CROSSOVER  # nothing stored yet
    machine_profile(replace(MEASURED, quant_gemv_max_tokens=128))
    assert host_crossover().gemv_max_tokens == 128


def test_bf16_weights_multiply_where_calibration_timed_them_faster(machine_profile):
    from codegen.quant_crossover import bf16_on_torch
    from codegen.target import host_target

    assert bf16_on_torch() == host_target().has("amx_bf16")  # nothing stored yet: torch only where the CPU has AMX
    machine_profile(replace(MEASURED, bf16_matmul_flops=4.2e11))
    assert not bf16_on_torch()
    machine_profile(replace(MEASURED, bf16_matmul_flops=0.0))  # torch's GEMM won, or the kernel cannot build
    assert bf16_on_torch()


def test_torch_takes_bf16_weights_only_when_clearly_faster(monkeypatch):
    times = iter([0.5, 1.0])  # torch's GEMM, then the kernel, half as fast: past the margin
    monkeypatch.setattr(calibration, "best_seconds", lambda fn, repeats: next(times))
    rates = calibration.measure_bf16_matmul(rows=32, cols=64, tokens=64, ring_bytes=0)
    assert rates == {"bf16_matmul_flops": 0.0, "bf16_torch_linear_flops": 2 * 32 * 64 * 64 / 0.5}
    times = iter([0.8, 1.0])  # torch a little faster alone: the switches between TVM and torch would eat that
    assert calibration.measure_bf16_matmul(rows=32, cols=64, ring_bytes=0)["bf16_matmul_flops"] > 0
