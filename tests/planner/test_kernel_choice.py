"""weight_format/kernels is chosen by measured kernel speed: TVM only where its kernels were timed here."""
from dataclasses import replace
from operators.physical import EngineKnobs
from planner.cost import LLMWorkload, llm_cost
from planner.examples import EXAMPLE_HARDWARE, SMOLLM2_CONFIG, SMOLLM2_FACTS

DECODE_ONE = LLMWorkload(requests=1, prompt_tokens=40, shared_tokens=0, static_prefix_tokens=0, output_tokens=64)
KNOBS = EngineKnobs(max_batch_size=64, prefill_chunk_tokens=512, kv_block_size=16, kv_cache_memory=1 << 30,
                    prefix_cache=True, scheduling="fcfs", weight_format="native", kernels="tvm")
# the fused Q4_1 GEMV measured ~14 G weights/s per core at 1 token, ~30 G weights x tokens/s at 4
FAST_TVM = replace(EXAMPLE_HARDWARE, quant_gemv_rate_t1=1.4e10, quant_gemv_rate_t4=3.0e10)


def seconds(knobs, hw, workload=DECODE_ONE):
    return llm_cost(workload, knobs, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, hw).seconds


def test_measured_fast_tvm_gemv_beats_torch_fp32_for_single_stream_decode():
    tvm = seconds(KNOBS, FAST_TVM)
    torch_fp32 = seconds(replace(KNOBS, weight_format="fp32", kernels="torch"), FAST_TVM)
    assert tvm < torch_fp32 / 2


def test_slow_measured_gemv_makes_tvm_lose():
    slow = replace(EXAMPLE_HARDWARE, quant_gemv_rate_t1=1e8, quant_gemv_rate_t4=4e8)
    assert seconds(KNOBS, slow) > seconds(replace(KNOBS, weight_format="fp32", kernels="torch"), slow)


def test_large_batches_pay_for_dequantizing_on_every_call():
    batch = LLMWorkload(requests=64, prompt_tokens=40, shared_tokens=0, static_prefix_tokens=0, output_tokens=64)
    # above the GEMV cutoff the TVM linear dequantizes to fp32 and runs the same GEMM as torch fp32, plus the unpacking
    assert seconds(KNOBS, FAST_TVM, batch) > seconds(replace(KNOBS, weight_format="fp32", kernels="torch"), FAST_TVM, batch)


def test_unmeasured_tvm_does_not_divide_by_zero():
    assert EXAMPLE_HARDWARE.quant_gemv_rate_t1 == 0
    assert 0 < seconds(KNOBS, EXAMPLE_HARDWARE) < float("inf")
