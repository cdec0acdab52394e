"""Causal attention over a paged KV cache, for decode and (chunked) prefill alike.

A batch is ragged: sequence b owns query rows query_start[b] .. query_start[b+1]-1 of q,
has context_lens[b] tokens in the cache (its new ones included) and finds token j's K/V
at k_cache[block_tables[b, j // block_size], j % block_size]. Query i of a sequence with
n queries sits at position context_lens[b] - n + i and attends to keys 0..that position.
Decode is the case n = 1 (operators.tensor_ops.paged_decode_attention); prefill the
case n = context (causal_attention).

Loop extents depend on the data (context lengths), which TE cannot express, so the
kernel is written as TIR loops; its config picks the key tile. Per (sequence, KV head)
task, run in parallel: each K/V row is read once for the whole query-head group (GQA),
scores for a tile of keys are formed with 16-lane accumulators, and an online softmax
(running max and sum) folds tile after tile into the output accumulators.
"""
from __future__ import annotations

import math

from codegen.build import KernelSpec
from codegen.kernels.common import exp_f32, loop_kinds

LANES = 16


def make_paged_attention(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                         key_tile: int = 16, gpu: bool = False):
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu)
    SCOPE = "local" if gpu else "global"  # small 'global' buffers live on the CPU stack

    if num_q_heads % num_kv_heads or head_dim % LANES:
        raise ValueError("need num_q_heads % num_kv_heads == 0 and head_dim % 16 == 0")
    HQ, HKV, D, BS, TILE = num_q_heads, num_kv_heads, head_dim, block_size, key_tile
    GROUP = HQ // HKV
    DC = D // LANES
    scale = 1.0 / math.sqrt(D)
    NEG = -3.0e38

    @T.prim_func
    def paged_attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, tables_h: T.handle,
                        qstart_h: T.handle, ctx_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        num_seqs = T.int64()
        num_seqs_p1 = T.int64()
        num_blocks = T.int64()
        max_blocks = T.int64()
        q = T.match_buffer(q_h, (num_tokens, HQ, D), "float32")
        k_cache = T.match_buffer(k_h, (num_blocks, BS, HKV, D), "float32")
        v_cache = T.match_buffer(v_h, (num_blocks, BS, HKV, D), "float32")
        block_tables = T.match_buffer(tables_h, (num_seqs, max_blocks), "int32")
        query_start = T.match_buffer(qstart_h, (num_seqs_p1,), "int32")
        context_lens = T.match_buffer(ctx_h, (num_seqs,), "int32")
        out = T.match_buffer(out_h, (num_tokens, HQ, D), "float32")
        for task in OUTER(num_seqs * HKV):
            b = task // HKV
            g = task % HKV
            q_begin = query_start[b]
            num_q = query_start[b + 1] - q_begin
            for i in range(num_q):
                row = q_begin + i
                num_keys = context_lens[b] - num_q + i + 1
                run_max = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
                run_sum = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
                acc = T.alloc_buffer((GROUP, D), "float32", scope=SCOPE)
                scores = T.alloc_buffer((GROUP, TILE), "float32", scope=SCOPE)
                lane_acc = T.alloc_buffer((LANES,), "float32", scope=SCOPE)
                tile_max = T.alloc_buffer((1,), "float32", scope=SCOPE)
                for h in range(GROUP):
                    run_max[h] = T.float32(NEG)
                    run_sum[h] = T.float32(0)
                    for d in VEC(D):
                        acc[h, d] = T.float32(0)
                for tile in range((num_keys + TILE - 1) // TILE):
                    count = T.min(TILE, num_keys - tile * TILE)
                    for h in range(GROUP):
                        for jj in range(TILE):
                            scores[h, jj] = T.float32(NEG)
                    for jj in range(count):
                        j = tile * TILE + jj
                        blk = block_tables[b, j // BS]
                        for h in range(GROUP):
                            for l in VEC(LANES):
                                lane_acc[l] = T.float32(0)
                            for dc in range(DC):
                                for l in VEC(LANES):
                                    lane_acc[l] = lane_acc[l] + q[row, g * GROUP + h, dc * LANES + l] * k_cache[blk, j % BS, g, dc * LANES + l]
                            scores[h, jj] = T.float32(0)
                            for l in range(LANES):
                                scores[h, jj] = scores[h, jj] + lane_acc[l]
                            scores[h, jj] = scores[h, jj] * T.float32(scale)
                    for h in range(GROUP):
                        tile_max[0] = run_max[h]
                        for jj in range(TILE):
                            tile_max[0] = T.max(tile_max[0], scores[h, jj])
                        for jj in VEC(TILE):
                            scores[h, jj] = T.Select(scores[h, jj] > T.float32(NEG), exp_f32(scores[h, jj] - tile_max[0]), T.float32(0))
                        alpha = exp_f32(run_max[h] - tile_max[0])
                        run_max[h] = tile_max[0]
                        run_sum[h] = run_sum[h] * alpha
                        for jj in range(TILE):
                            run_sum[h] = run_sum[h] + scores[h, jj]
                        for d in VEC(D):
                            acc[h, d] = acc[h, d] * alpha
                    for jj in range(count):
                        j = tile * TILE + jj
                        blk = block_tables[b, j // BS]
                        for h in range(GROUP):
                            for d in VEC(D):
                                acc[h, d] = acc[h, d] + scores[h, jj] * v_cache[blk, j % BS, g, d]
                for h in range(GROUP):
                    for d in VEC(D):
                        out[row, g * GROUP + h, d] = acc[h, d] / run_sum[h]

    return paged_attention


def paged_attention_config(target, **params) -> dict:
    return {}


def schedule_paged_attention(sch, cfg: dict) -> None:
    """The loop structure is written into the TIR above; nothing left to schedule."""


SPEC = KernelSpec("paged_attention", make_paged_attention, paged_attention_config, schedule_paged_attention,
                  args=("q", "k_cache", "v_cache", "block_tables", "query_start", "context_lens", "out"),
                  source_file=__file__, scheduled=True)
