"""Paged attention over a ragged batch equals the reference attention of each sequence alone
(RoPE and the KV write included: the backends take the fused qkv projection)."""
from __future__ import annotations

import pytest
import torch

from operators.tensor_ops import causal_attention, paged_decode_attention, rope_cos_sin, rope_inv_freq, rope_qkv
from codegen.kernel_set import kernel_set
from runtime.batch import BatchRow, ScheduledBatch
from runtime.model_runner import ModelRunner, PagedKVCache


class _Config:
    num_layers, num_kv_heads, head_dim, num_heads = 1, 2, 8, 6


class _Model:
    config = _Config()


@pytest.mark.parametrize("attention_kernel", ["tvm", "torch"])
@pytest.mark.parametrize("kv_cache_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_ragged_batch_attention_equals_per_sequence_reference(block_size, kv_cache_dtype, attention_kernel):
    torch.manual_seed(block_size)
    c = _Config()
    runner = ModelRunner(_Model(), num_blocks=128, block_size=block_size, kv_cache_dtype=kv_cache_dtype,
                         attention=kernel_set("cpu").attention() if attention_kernel == "tvm" else None)
    # (cached tokens, new tokens) per row: decodes, a chunk after a cached prefix, a fresh prefill.
    shapes = [(9, 1), (0, 1), (5, 6), (0, 7), (17, 1), (3, 40), (0, 2)]  # 40 tokens: a group of its own
    next_block, rows, history = 0, [], []
    for seq_id, (cached, new) in enumerate(shapes):
        num_blocks = -(-(cached + new) // block_size)
        table = tuple(range(next_block, next_block + num_blocks))[::-1]  # deliberately not in order
        next_block += num_blocks
        k_old, v_old = torch.randn(cached, c.num_kv_heads, c.head_dim), torch.randn(cached, c.num_kv_heads, c.head_dim)
        # what the cache holds is what attention sees (bf16 rounds once, on the way in)
        k_old, v_old = k_old.to(runner.cache.dtype).float(), v_old.to(runner.cache.dtype).float()
        for pos in range(cached):
            runner.cache.block_view(0, "k")[table[pos // block_size], pos % block_size] = k_old[pos]
            runner.cache.block_view(0, "v")[table[pos // block_size], pos % block_size] = v_old[pos]
        rows.append(BatchRow(seq_id, tuple(range(new)), cached, table, (new - 1,)))
        history.append((k_old, v_old))
    batch = ScheduledBatch(tuple(rows))
    inputs = runner.prepare_batch(batch)
    T = batch.num_tokens
    qkv = torch.randn(T, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim)  # [T, (Hq + 2 Hkv) D]
    cos, sin = rope_cos_sin(inputs.positions, rope_inv_freq(c.head_dim, 10000.0))  # [T, D]
    out = runner.attention(inputs).attend(0, qkv, cos, sin)  # [T, Hq, D]
    q, k, v = rope_qkv(qkv, cos, sin, c.num_heads, c.num_kv_heads)
    k, v = k.to(runner.cache.dtype).float(), v.to(runner.cache.dtype).float()
    # The flat batch puts decodes first, then prefill chunks longest first.
    order = sorted(range(len(rows)), key=lambda i: (rows[i].num_tokens > 1, -rows[i].num_tokens))
    if attention_kernel == "torch":
        assert len(inputs.groups) == 3  # decodes, the 40-token chunk, the rest
    begin = 0
    for i in order:
        row, (k_old, v_old) = rows[i], history[i]
        end = begin + row.num_tokens
        want = causal_attention(q[begin:end], torch.cat([k_old, k[begin:end]]), torch.cat([v_old, v[begin:end]]),
                                q_start=row.start)
        torch.testing.assert_close(out[begin:end], want, atol=1e-5, rtol=1e-5)
        if row.num_tokens == 1:  # and the operator library's paged reference agrees
            got = paged_decode_attention(q[begin:end], runner.cache.block_view(0, "k").float(),
                                         runner.cache.block_view(0, "v").float(),
                                         torch.tensor([row.block_table]), torch.tensor([row.context_len]))
            torch.testing.assert_close(out[begin:end], got, atol=1e-5, rtol=1e-5)
        begin = end


def test_kv_budget_sets_the_number_of_blocks():
    c = _Config()
    per_block = PagedKVCache.bytes_per_block(c, 16)
    assert per_block == 2 * 1 * 16 * 2 * 8 * 4
    assert PagedKVCache(1, 3, 16, 2, 8).nbytes == 3 * per_block
