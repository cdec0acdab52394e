"""The engine's two attention backends timed at a decoder's shape, as achieved FLOP/s for the cost model.

Each backend runs exactly as the model runner calls it (cache write included; the torch
backend's block gather included), once for a decode step (DECODE_ROWS sequences of
DECODE_CONTEXT cached tokens, one query each) and once for a prefill chunk (one sequence,
PREFILL_TOKENS causal queries). FLOPs are 4 x query heads x head_dim per query-key pair.

    rates = measure_attention()   # {'attention_tvm_decode_flops': ..., 'attention_torch_prefill_flops': ...}
"""
from __future__ import annotations

import time

import torch

from runtime.batch import BatchRow, ScheduledBatch
from codegen.kernel_set import kernel_set
from runtime.model_runner import ModelRunner

DECODE_ROWS, DECODE_CONTEXT, PREFILL_TOKENS, BLOCK_SIZE = 16, 256, 128, 16
KERNELS = ("tvm", "torch")


class _Shape:
    """SmolLM2-135M's attention, one layer: all the model runner reads of a model here."""

    class config:  # noqa: N801 - mirrors LlamaModel.config
        num_layers, num_heads, num_kv_heads, head_dim = 1, 9, 3, 64


def _batch(rows: list[tuple[int, int]]) -> ScheduledBatch:
    """(cached tokens, new tokens) per row -> a batch on consecutive blocks."""
    out, next_block = [], 0
    for seq_id, (cached, new) in enumerate(rows):
        blocks = -(-(cached + new) // BLOCK_SIZE)
        table = tuple(range(next_block, next_block + blocks))
        next_block += blocks
        out.append(BatchRow(seq_id, (0,) * new, cached, table, (new - 1,)))
    return ScheduledBatch(tuple(out))


def _seconds(kernel: str, batch: ScheduledBatch, repeats: int = 15) -> float:
    c = _Shape.config
    blocks = sum(len(r.block_table) for r in batch.rows)
    runner = ModelRunner(_Shape(), blocks, BLOCK_SIZE, "fp32", kernel_set("cpu").attention() if kernel == "tvm" else None)
    inputs = runner.prepare_batch(batch)
    tokens = batch.num_tokens
    qkv = torch.randn(tokens, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim)  # [T, (Hq + 2 Hkv) D]
    cos, sin = torch.randn(tokens, c.head_dim), torch.randn(tokens, c.head_dim)  # [T, D]
    backend = runner.attention(inputs)
    with torch.inference_mode():
        backend.attend(0, qkv, cos, sin)  # warm-up: kernel load, first touch
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.attend(0, qkv, cos, sin)
            best = min(best, time.perf_counter() - t0)
    return best


def measure_attention() -> dict[str, float]:
    """Achieved FLOP/s of each backend in decode and prefill; zero for a backend that cannot run here."""
    c = _Shape.config
    flops_per_pair = 4 * c.num_heads * c.head_dim
    decode = _batch([(DECODE_CONTEXT - 1, 1)] * DECODE_ROWS)
    prefill = _batch([(0, PREFILL_TOKENS)])
    pairs = {"decode": DECODE_ROWS * DECODE_CONTEXT, "prefill": PREFILL_TOKENS * (PREFILL_TOKENS + 1) / 2}
    rates = {}
    for kernel in KERNELS:
        for phase, batch in (("decode", decode), ("prefill", prefill)):
            try:
                rate = flops_per_pair * pairs[phase] / _seconds(kernel, batch)
            except Exception:  # noqa: BLE001 - a kernel that does not build here is not an option
                rate = 0.0
            rates[f"attention_{kernel}_{phase}_flops"] = rate
    return rates
