"""weight_format/kernels is chosen by measured kernel speed: TVM only where its kernels were timed here."""
from dataclasses import replace
from operators.engine_config import EngineConfig
from planner.cost import LLMWorkload, llm_cost
from planner.examples import EXAMPLE_HARDWARE, SMOLLM2_CONFIG, SMOLLM2_FACTS

DECODE_ONE = LLMWorkload(requests=1, prompt_tokens=40, shared_tokens=0, static_prefix_tokens=0, output_tokens=64)
KNOBS = EngineConfig(max_batch_size=64, prefill_chunk_tokens=512, kv_block_size=16, kv_cache_memory=1 << 30,
                    prefix_cache=True, scheduling="fcfs", weight_format="native", kernels="tvm")
# catalog.hardware.measure_quant_kernels on the 2-core machine: GEMV ~20 G weights/s at 1 token and
# ~26 G weights x tokens/s at 4; GEMM unpacks ~8 G weights/s once per call, then ~48 G weights x tokens/s
FAST_TVM = replace(EXAMPLE_HARDWARE, quant_gemv_rate_t1=2.0e10, quant_gemv_rate_t4=2.6e10,
                   quant_gemm_unpack_rate=8e9, quant_gemm_rate=4.8e10)
BATCH = LLMWorkload(requests=64, prompt_tokens=40, shared_tokens=0, static_prefix_tokens=0, output_tokens=64)


def seconds(knobs, hw, workload=DECODE_ONE):
    return llm_cost(workload, knobs, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, hw).seconds


def test_measured_fast_tvm_gemv_beats_torch_fp32_for_single_stream_decode():
    tvm = seconds(KNOBS, FAST_TVM)
    torch_fp32 = seconds(replace(KNOBS, weight_format="fp32", kernels="torch"), FAST_TVM)
    assert tvm < torch_fp32 / 2


def test_slow_measured_gemv_makes_tvm_lose():
    slow = replace(EXAMPLE_HARDWARE, quant_gemv_rate_t1=1e8, quant_gemv_rate_t4=4e8)
    assert seconds(KNOBS, slow) > seconds(replace(KNOBS, weight_format="fp32", kernels="torch"), slow)


def test_batched_decode_is_priced_by_the_measured_gemm():
    slow_gemm = replace(FAST_TVM, quant_gemm_rate=FAST_TVM.quant_gemm_rate / 4)
    assert seconds(KNOBS, slow_gemm, BATCH) > seconds(KNOBS, FAST_TVM, BATCH)
    decode_one = [llm_cost(DECODE_ONE, KNOBS, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, hw).decode_seconds
                  for hw in (slow_gemm, FAST_TVM)]
    assert decode_one[0] == decode_one[1]  # one stream decodes on the GEMV (its 40-token prefill is a GEMM)


def test_fused_gemm_unpacks_once_per_call_so_large_batches_keep_tvm_ahead_of_torch_fp32():
    assert seconds(KNOBS, FAST_TVM, BATCH) < seconds(replace(KNOBS, weight_format="fp32", kernels="torch"),
                                                     FAST_TVM, BATCH)


def test_unmeasured_gemm_is_priced_at_torch_fp32_flops():
    unmeasured = replace(FAST_TVM, quant_gemm_unpack_rate=0.0, quant_gemm_rate=0.0)
    assert 0 < seconds(KNOBS, unmeasured, BATCH) < float("inf")


def test_unmeasured_tvm_does_not_divide_by_zero():
    assert EXAMPLE_HARDWARE.quant_gemv_rate_t1 == 0
    assert 0 < seconds(KNOBS, EXAMPLE_HARDWARE) < float("inf")


LONG_PROMPTS = LLMWorkload(requests=8, prompt_tokens=400, shared_tokens=0, static_prefix_tokens=0, output_tokens=1)
BF16 = replace(KNOBS, prefill_dtype="bf16")
# catalog.hardware.measure_bf16_prefill on the 2-core machine: dequantize ~2.5 G weights/s, AMX GEMM ~1.5e11
FAST_BF16 = replace(FAST_TVM, quant_dequant_bf16_rate=2.5e9, quant_bf16_gemm_rate=1.5e11)


def prefill_seconds(knobs, hw, workload=LONG_PROMPTS):
    return llm_cost(workload, knobs, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, hw).prefill_seconds


def test_bf16_prefill_is_priced_by_its_measured_rates():
    assert prefill_seconds(BF16, FAST_BF16) < prefill_seconds(KNOBS, FAST_BF16) / 1.5
    slow_gemm = replace(FAST_BF16, quant_bf16_gemm_rate=FAST_BF16.quant_gemm_rate / 2)
    assert prefill_seconds(BF16, slow_gemm) > prefill_seconds(KNOBS, slow_gemm)


def test_bf16_prefill_dtype_changes_nothing_below_the_crossover():
    short = LLMWorkload(requests=1, prompt_tokens=40, shared_tokens=0, static_prefix_tokens=0, output_tokens=64)
    assert seconds(BF16, FAST_BF16, short) == seconds(KNOBS, FAST_BF16, short)


def test_bf16_prefill_dtype_only_prices_the_native_tvm_path():
    for fmt, kernels in (("fp32", "torch"), ("native", "torch"), ("bf16", "torch")):
        k = replace(KNOBS, weight_format=fmt, kernels=kernels)
        assert prefill_seconds(replace(k, prefill_dtype="bf16"), FAST_BF16) == prefill_seconds(k, FAST_BF16)


def test_unmeasured_bf16_prefill_falls_back_to_bf16_flops():
    assert FAST_TVM.quant_bf16_gemm_rate == 0
    unmeasured = prefill_seconds(BF16, FAST_TVM)
    assert 0 < unmeasured < prefill_seconds(KNOBS, FAST_TVM)  # the 2-core box's AMX bf16 beats the fp32 GEMM


def test_captured_decode_steps_are_priced_at_one_launch_a_layer():
    """codegen.captured_forward runs a layer's 9 kernels pre-bound: a one-row decode's launch overhead is a fraction
    of the same decode where a step runs the model's Python (an int8 KV cache is quantized in torch)."""
    captured = llm_cost(DECODE_ONE, KNOBS, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, FAST_TVM)
    python = llm_cost(DECODE_ONE, replace(KNOBS, kv_cache_dtype="int8"), SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes,
                      FAST_TVM)
    assert captured.overhead_seconds < python.overhead_seconds / 3


# a core whose VNNI GEMV beats its GEMM at every size timed (2026-12-07, Zen 4: 512 rows, ~118 G weights x tokens/s
# a row past the 4th against the GEMM's ~95 G)
VNNI_CORE = replace(FAST_TVM, quant_gemv_max_tokens=512, quant_gemv_batch_rate=1.18e11, quant_gemm_rate=9.5e10)


def test_the_machines_measured_crossover_moves_batched_decode_onto_the_gemv():
    from planner.cost import linear_rates
    from planner.operator_kernels import linear_kernel

    assert linear_kernel("Q4_1", KNOBS, 64) == "tvm quant_gemm"  # no measured bound: CROSSOVER's 8 rows
    assert linear_kernel("Q4_1", KNOBS, 64, VNNI_CORE.quant_gemv_max_tokens) == "tvm quant_gemv"
    assert linear_kernel("Q4_1", KNOBS, 600, VNNI_CORE.quant_gemv_max_tokens) == "tvm quant_gemm"
    assert linear_rates(64, KNOBS, VNNI_CORE) == ("quant_gemv_rate_t4", "quant_gemv_batch_rate")
    slower_gemv = replace(VNNI_CORE, quant_gemv_batch_rate=VNNI_CORE.quant_gemv_batch_rate / 2)
    assert seconds(KNOBS, slower_gemv, BATCH) > seconds(KNOBS, VNNI_CORE, BATCH)


def test_bf16_prefill_where_set_takes_over_from_the_gemv_at_its_own_bound():
    from codegen.quant_crossover import crossover_for

    wide = crossover_for(512)
    assert [wide.path(n) for n in (1, 64, 512, 513)] == ["gemv", "gemv", "gemv", "gemm"]
    assert [wide.path(n, "bf16") for n in (8, 63, 64, 1000)] == ["gemv", "gemv", "dequant_bf16", "dequant_bf16"]
    assert crossover_for(0).gemv_max_tokens == 8  # not measured: the default's


def test_argmax_only_rows_price_the_lm_head_at_the_screen_rate():
    greedy = replace(BATCH, argmax_only=True)
    screening = replace(VNNI_CORE, quant_screen_rate=1.73e11)
    cost = llm_cost(greedy, KNOBS, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, screening)
    assert cost.greedy_screen and cost.seconds < seconds(KNOBS, screening, BATCH)
    unmeasured = llm_cost(greedy, KNOBS, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, VNNI_CORE)
    assert not unmeasured.greedy_screen and unmeasured.seconds == seconds(KNOBS, VNNI_CORE, BATCH)
    ngram = replace(KNOBS, speculative="ngram")  # verifying drafts reads full logits: decode is not screened
    assert llm_cost(greedy, ngram, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, screening).decode_seconds == \
        llm_cost(BATCH, ngram, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, screening).decode_seconds


def test_bf16_weights_on_tvm_are_priced_at_the_timed_bf16_matmul_where_it_was_timed():
    from planner.cost import linear_rates
    from planner.operator_kernels import linear_kernel

    bf16 = replace(KNOBS, weight_format="bf16")
    # a CPU without AMX times codegen's bf16 matmul (Zen 4: ~420 GFLOP/s at 64 rows); one with AMX leaves it at 0
    zen4 = replace(FAST_TVM, bf16_matmul_flops=4.2e11)
    assert linear_kernel("Q4_1", bf16, 64, bf16_matmul=True) == "tvm bf16_matmul"
    assert linear_kernel("Q4_1", bf16, 64) == "torch bf16 matmul"
    assert linear_kernel("Q4_1", replace(bf16, kernels="torch"), 64, bf16_matmul=True) == "torch bf16 matmul"
    assert linear_rates(64, bf16, zen4) == ("bf16_matmul_flops", "copy_bandwidth")
    assert linear_rates(64, bf16, FAST_TVM) == ("bf16_flops", "copy_bandwidth")
    assert linear_rates(64, replace(bf16, kernels="torch"), zen4) == ("bf16_flops", "copy_bandwidth")
    assert seconds(bf16, zen4, BATCH) < seconds(bf16, FAST_TVM, BATCH)  # 420 against torch's 110 GFLOP/s


def test_bf16_weights_on_torch_are_priced_at_torchs_linear_of_the_same_shape():
    """A square GEMM's rate overstates torch's bf16 linear at 64 rows (Zen 4: 413 against ~230 GFLOP/s): priced at
    the square, bf16/torch undercut codegen's measured 313 and the plan ran 478 instead of ~720 tok/s on W1."""
    from planner.cost import linear_rates

    bf16 = replace(KNOBS, weight_format="bf16")
    zen4 = replace(FAST_TVM, bf16_flops=4.13e11, bf16_matmul_flops=3.13e11, bf16_torch_linear_flops=2.3e11)
    on_torch = replace(bf16, kernels="torch")
    assert linear_rates(64, on_torch, zen4) == ("bf16_torch_linear_flops", "copy_bandwidth")
    assert seconds(bf16, zen4, BATCH) < seconds(on_torch, zen4, BATCH)
    unmeasured = replace(zen4, bf16_torch_linear_flops=0.0)  # kernels not measured: the square GEMM's rate
    assert linear_rates(64, on_torch, unmeasured) == ("bf16_flops", "copy_bandwidth")


def test_greedy_rows_of_bf16_weights_on_codegens_matmul_are_screened_at_any_batch():
    """A bf16 lm_head made from GGUF blocks screens over them (codegen.linear.TvmBf16Linear.argmax) where codegen's
    bf16 matmul runs it; with torch's GEMM (an AMX CPU) or an lm_head stored unquantized, it multiplies in full."""
    bf16 = replace(KNOBS, weight_format="bf16")
    zen4 = replace(VNNI_CORE, bf16_matmul_flops=4.2e11, quant_screen_rate=1.73e11)
    for workload in (DECODE_ONE, BATCH):
        greedy = replace(workload, argmax_only=True)
        screened = llm_cost(greedy, bf16, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, zen4)
        assert screened.greedy_screen and screened.decode_seconds < seconds(bf16, zen4, workload)
        unquantized = llm_cost(greedy, bf16, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes, zen4, quantized_head=False)
        assert not unquantized.greedy_screen and unquantized.seconds == seconds(bf16, zen4, workload)
    amx = replace(zen4, bf16_matmul_flops=0.0)
    assert not llm_cost(replace(BATCH, argmax_only=True), bf16, SMOLLM2_CONFIG, SMOLLM2_FACTS.weight_bytes,
                        amx).greedy_screen


def test_the_screen_of_a_few_rows_is_priced_at_reading_its_blocks():
    from planner.cost import screen_seconds

    zen4 = replace(VNNI_CORE, quant_screen_rate=1.73e11)
    head = {"native": 30e6}
    assert screen_seconds(1, 28e6, head, zen4) == 30e6 / zen4.copy_bandwidth
    assert screen_seconds(64, 28e6, head, zen4) == max(64 * 28e6 / 1.73e11, 30e6 / zen4.copy_bandwidth)
