"""The kernel map: what each operator of a model call runs under the chosen knobs, and why.

It mirrors how codegen.model_kernels.build_model and runtime.model_runner put the model together, from their
own sources of truth: each linear's weight format as built (ModelFacts.linear_formats, recorded by
catalog.model_catalog.describe_loaded), the quantized linears' crossover (codegen.quant_crossover) and the
dense GEMV's limit, at the rows the cost model priced a step with; model_ops' norms and SiLU·mul (TVM's
kernels or torch's, as the weight path's kernels); and the attention backend. Each linear is priced with the
cost model's own per-path pricing (planner.cost.linear_seconds), on the chosen weight path and on the
runner-up's, corrected as the plan's estimate is.
"""
from __future__ import annotations

from dataclasses import replace

from catalog.quant import QUANT_TYPES
from codegen.quant_crossover import CAPTURED_MAX_TOKENS, DENSE_GEMV_MAX_TOKENS, crossover_for
from operators.physical import Choice, OperatorKernel
from operators.engine_config import EngineConfig
from planner.choose import correction, initial_knobs
from planner.context import ModelFacts, OptimizerContext
from planner.cost import (CAPTURED_OPS_PER_LAYER, LLMCost, captured, linear_rates, linear_seconds, screen_seconds,
                          screens, weight_share)

# what codegen.linear.TvmQuantizedLinear runs on each of codegen.quant_crossover's paths
QUANT_PATH_KERNELS = {"gemv": "tvm quant_gemv", "gemm": "tvm quant_gemm",
                      "dequant_bf16": "tvm dequantize to bf16 + torch bf16 matmul"}
MEASURED_FORMAT = "Q4_1"  # catalog.hardware times TVM's quantized kernels on this format only
# HardwareProfile figures in billions: the quantized kernels' rates count weights (x rows where it scales with them)
_UNITS = {"copy_bandwidth": "GB/s", "fp32_flops": "GFLOP/s", "bf16_flops": "GFLOP/s", "bf16_matmul_flops": "GFLOP/s",
          "bf16_torch_linear_flops": "GFLOP/s",
          "quant_gemv_rate_t4": "G weights x rows/s", "quant_gemm_rate": "G weights x rows/s",
          "quant_bf16_gemm_rate": "G weights x rows/s", "quant_gemv_batch_rate": "G weights x rows/s",
          "quant_screen_rate": "G weights x rows/s"}


def operator_kernels(knobs: EngineConfig, cost: LLMCost, facts: ModelFacts, ctx: OptimizerContext,
                     choices: list[Choice]) -> tuple[OperatorKernel, ...]:
    """The linears (qkv, o, gate_up, down, lm_head), norms, SiLU·mul and attention of the model under `knobs`;
    cost: the plan's cost on them (its rows per step); choices: the optimizer's, whose weight path and
    attention kernel choices say why."""
    by_knob = {c.knob: c for c in choices}
    weights, attention = by_knob["weight_format/kernels"], by_knob["attention_kernel"]
    if facts.linear_formats is None:
        linears = (OperatorKernel("linears", computed=f"weight path {knobs.weight_format}/{knobs.kernels}",
                                  why="formats unknown: the catalog entry predates them (CREATE OR REPLACE MODEL "
                                      "records them)"),)
    else:
        linears = tuple(_linear(name, n, knobs, cost, facts, ctx, weights)
                        for name, n in linear_weights(facts).items())
    # norms and SiLU·mul follow the kernels knob, which a SET (or a running engine) may fix apart from the format
    kernels_forced_by = None if ctx.settings_for(facts.name).is_auto("kernels") else weights.forced_by
    return (linears + _row_ops(knobs, cost, kernels_forced_by) + (_attention(knobs, cost, attention, ctx),)
            + _captured_steps(knobs, cost, facts.config))


def linear_weights(facts: ModelFacts) -> dict[str, float]:
    """Weights of each linear, every layer together (catalog.linear_layout.LAYER_LINEARS, and the lm_head)."""
    c = facts.config
    h, f, d = c.hidden_size, c.intermediate_size, c.head_dim
    per_layer = {"qkv": (c.num_heads + 2 * c.num_kv_heads) * d * h, "o": h * c.num_heads * d, "gate_up": 2 * f * h,
                 "down": h * f}
    return {**{k: v * c.num_layers for k, v in per_layer.items()}, "lm_head": c.vocab_size * h}


def linear_kernel(stored: str, knobs: EngineConfig, rows: float, gemv_max_tokens: int = 0,
                  bf16_matmul: bool = False) -> str:
    """The kernel a call of `rows` rows runs on a weight built as `stored`: what codegen.model_kernels.tvm_linear
    (kernels 'tvm') and operators.linear.make_linear (kernels 'torch') make of it, on a machine whose measured
    GEMV bound is gemv_max_tokens (0: not measured) and that timed codegen's bf16 matmul (`bf16_matmul`; tvm_linear
    leaves bf16 weights on torch where the CPU has AMX, and the calibration does not time the kernel there)."""
    if knobs.weight_format == "bf16":
        return "tvm bf16_matmul" if knobs.kernels == "tvm" and bf16_matmul else "torch bf16 matmul"
    if knobs.weight_format == "native" and stored in QUANT_TYPES:
        if knobs.kernels == "tvm":
            return QUANT_PATH_KERNELS[crossover_for(gemv_max_tokens).path(rows, knobs.prefill_dtype)]
        return "torch dequantize + fp32 matmul"
    if knobs.kernels == "tvm" and rows <= DENSE_GEMV_MAX_TOKENS:
        return "tvm dense_matmul"  # codegen.linear.TvmDenseLinear's GEMV; torch's GEMM above
    return "torch fp32 matmul"


def computed_format(stored: str, knobs: EngineConfig) -> str:
    """What the kernels read of a weight built as `stored`."""
    if knobs.weight_format == "native" and stored in QUANT_TYPES:
        return "kept quantized" if knobs.kernels == "tvm" else "dequantized to fp32 on every call"
    dense = "bf16" if knobs.weight_format == "bf16" else "fp32"
    if stored == dense:
        return "as stored"
    return f"{'dequantized' if stored in QUANT_TYPES else 'converted'} to {dense} at load"


def _each(stored: str, describe) -> str:
    """describe(format) over a linear whose layers differ in format ('Q4_1+fp32'), once per distinct answer."""
    answers = [describe(part) for part in stored.split("+")]
    return " / ".join(dict.fromkeys(answers))


def _runner_up(knobs: EngineConfig, choice: Choice, facts: ModelFacts, ctx: OptimizerContext) -> EngineConfig | None:
    """The runner-up weight path's knobs, as the weight path choice priced them."""
    if choice.runner_up is None:
        return None
    fmt, kernels = str(choice.runner_up).split("/")
    return replace(knobs, weight_format=fmt, kernels=kernels, prefill_dtype=initial_knobs(ctx, facts).prefill_dtype)


def _linear(name: str, weights: float, knobs: EngineConfig, cost: LLMCost, facts: ModelFacts, ctx: OptimizerContext,
            choice: Choice) -> OperatorKernel:
    hw = ctx.hardware
    stored = facts.linear_formats[name]
    rows = {"decode": cost.decode_rows, "prefill": cost.prefill_logit_rows if name == "lm_head" else cost.prefill_rows}
    share = weight_share(dict(facts.weight_bytes), weights, facts.config)

    def screened(k: EngineConfig, phase: str) -> bool:
        """The lm_head's argmax-only rows of this phase go through codegen.greedy_screen (planner.cost.screens)."""
        return (name == "lm_head" and k is knobs and cost.greedy_screen and stored in QUANT_TYPES
                and screens(rows[phase], k, hw) and (phase == "prefill" or k.speculative == "off"))

    def seconds(k: EngineConfig | None, phase: str) -> float | None:
        if k is None or rows[phase] <= 0:
            return None
        factor = correction(ctx, facts.name, k)[0 if phase == "prefill" else 1]
        if screened(k, phase):
            return screen_seconds(rows[phase], weights, share, hw) * factor
        return linear_seconds(rows[phase], weights, k, share, hw) * factor

    def kernel(phase: str) -> str:
        if rows[phase] <= 0:
            return ""
        if screened(knobs, phase):
            return "tvm quant_gemv greedy screen"
        return _each(stored, lambda part: linear_kernel(part, knobs, rows[phase], hw.quant_gemv_max_tokens,
                                                        hw.bf16_matmul_flops > 0))

    alt = _runner_up(knobs, choice, facts, ctx)
    why = f"forced by {choice.forced_by}" if choice.forced else "the cheapest weight path"
    if "tvm" not in ctx.kernels:
        why += f" (TVM's kernels did not build or run for this CPU{_on(ctx)}: torch only)"
    elif knobs.kernels == "tvm" and ctx.cpu_target:
        why += f"; TVM kernels built for {ctx.cpu_target}"
    names = dict.fromkeys(n for phase in rows if rows[phase] > 0 for n in (
        ("quant_screen_rate", "copy_bandwidth") if screened(knobs, phase) else linear_rates(rows[phase], knobs, hw)))
    why += "; priced at " + ", ".join(_rate(n, hw) for n in names)
    if any(screened(knobs, phase) for phase in rows):
        why += ("; greedy rows take only their argmax: one int8 piece per activation and a bound per vocabulary row, "
                "the rows the bound cannot rule out recomputed exactly (the exact logits' argmax)")
        if knobs.weight_format == "bf16":
            why += (f" of the bf16 rows: the screen reads the {stored} blocks, kept beside them, and widens its bound "
                    "by their rounding to bf16")
    if knobs.weight_format == "native" and knobs.kernels == "tvm" and stored != MEASURED_FORMAT and \
            hw.quant_gemv_rate_t1 > 0:
        why += f" (timed on {MEASURED_FORMAT})"
    return OperatorKernel(name, stored, _each(stored, lambda part: computed_format(part, knobs)), kernel("decode"),
                          kernel("prefill"), rows["decode"], rows["prefill"], seconds(knobs, "decode"),
                          seconds(knobs, "prefill"), choice.runner_up if alt else None, seconds(alt, "decode"),
                          seconds(alt, "prefill"), why)


def _on(ctx: OptimizerContext) -> str:
    return f", {ctx.cpu_target}" if ctx.cpu_target else ""


def _rate(name: str, hw) -> str:
    return f"{name} {getattr(hw, name) / 1e9:.3g} {_UNITS.get(name, 'G weights/s')}"


def _row_ops(knobs: EngineConfig, cost: LLMCost, forced_by: str | None) -> tuple[OperatorKernel, ...]:
    """codegen.model_kernels.model_ops: TVM's row kernels with kernels 'tvm', torch's otherwise."""
    how = f"forced by {forced_by}" if forced_by else "with the weight path"
    why = f"as kernels = {knobs.kernels} ({how}); priced as launches and passes over the rows (planner.cost)"

    def entry(name: str, kernel: str) -> OperatorKernel:
        return OperatorKernel(name, decode=kernel if cost.decode_rows > 0 else "",
                              prefill=kernel if cost.prefill_rows > 0 else "", decode_rows=cost.decode_rows,
                              prefill_rows=cost.prefill_rows, why=why)
    return (entry("norms", f"{knobs.kernels} rms_norm, add_rms_norm"), entry("silu_mul", f"{knobs.kernels} silu_mul"))


def _captured_steps(knobs: EngineConfig, cost: LLMCost, config) -> tuple[OperatorKernel, ...]:
    """codegen.captured_forward: a phase whose steps the model runner runs as pre-bound kernel calls."""
    rows = {"decode": cost.decode_rows, "prefill": cost.prefill_rows}
    if not any(captured(n, knobs, config) for n in rows.values()):
        return ()
    how = {p: "" if n <= 0 else "captured kernel calls" if captured(n, knobs, config) else "Python forward"
           for p, n in rows.items()}
    return (OperatorKernel("forward", decode=how["decode"], prefill=how["prefill"],
                           decode_rows=cost.decode_rows, prefill_rows=cost.prefill_rows,
                           why=f"steps of at most {CAPTURED_MAX_TOKENS} rows on TVM kernels, priced at "
                               f"{CAPTURED_OPS_PER_LAYER:g} launch a layer"),)


def _attention(knobs: EngineConfig, cost: LLMCost, choice: Choice, ctx: OptimizerContext) -> OperatorKernel:
    """runtime.model_runner's backends: KernelPagedAttention ('tvm') or GatherPagedAttention ('torch')."""
    hw = ctx.hardware
    kernel = "tvm rope_qkv + paged_attention" if knobs.attention_kernel == "tvm" else "torch RoPE + gather + SDPA"
    phases = [p for p, rows in (("decode", cost.decode_rows), ("prefill", cost.prefill_rows)) if rows > 0]
    if choice.forced:
        why = f"forced by {choice.forced_by}"
    elif "tvm" not in ctx.kernels:
        why = f"the only backend here (TVM's kernels did not build or run for this CPU{_on(ctx)})"
    else:
        def rate(k: str, phase: str) -> str:
            flops = getattr(hw, f"attention_{k}_{phase}_flops")
            return f"{k} {flops / 1e9:.3g}" if flops > 0 else f"{k} not timed"
        measured = "; ".join(f"{p} {rate('tvm', p)} vs {rate('torch', p)} GFLOP/s" for p in phases)
        why = f"the cheaper backend, at its measured rates ({measured})" if measured else "the cheaper backend"
    return OperatorKernel("attention", computed=f"KV cache {knobs.kv_cache_dtype}",
                          decode=kernel if "decode" in phases else "", prefill=kernel if "prefill" in phases else "",
                          decode_rows=cost.decode_rows, prefill_rows=cost.prefill_rows, why=why)
