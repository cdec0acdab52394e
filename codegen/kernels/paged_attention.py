"""Causal attention over a paged KV cache, for decode and (chunked) prefill alike.

A batch is ragged: sequence b owns query rows query_start[b] .. query_start[b+1]-1 of q,
has context_lens[b] tokens in the cache (its new ones included) and finds token j's key
at k_cache[block_tables[b, j // block_size], :, :, j % block_size] and its value at
v_cache[block_tables[b, j // block_size], :, j % block_size]. Query i of a sequence with
n queries sits at position context_lens[b] - n + i and attends to keys 0..that position.
Decode is the case n = 1 (operators.tensor_ops.paged_decode_attention); prefill the
case n = context (causal_attention).

Layout (vLLM's idea): a block holds, per KV head, its keys transposed [D, block_size]
and its values [block_size, D], each one contiguous run. Scores for a whole block are
then block_size-lane FMAs over the head dimension, no horizontal sums, and values fold
into D-lane accumulators; 4 independent score accumulators per head, and all heads of a
group interleaved, hide FMA latency.
Loop extents depend on the data (context lengths), which TE cannot express, so the
kernel is written as TIR loops: a task per (sequence, KV head), reading each block once
per query-head group member, with an online softmax (running max and sum) over blocks.

A row's keys are reduced in chunks of CHUNK_TOKENS, each from a fresh softmax state,
and the chunks' states merged in order (flash-decoding's split). That fixes the
arithmetic whoever runs a chunk: with few tasks for the lanes (one sequence has 3 KV
heads for 2 threads), a decode row's chunks become tasks of their own, written to the
caller's `partials` and merged by a second pass, and a prefill sequence's rows are
dealt out in groups of ROWS; in a large batch one task runs all of a sequence. The
result is the same to the bit either way, so a row's output does not depend on its
batch (shared/notes/determinism.md). Tasks go round-robin to the `lanes` (TVM's
threads): TVM splits a parallel loop into contiguous ranges, which would hand one
thread the long sequences' later chunks.

The cache holds fp32 or bf16 (half the bytes; widened to fp32 on load, exactly), or int8 with
per-token scales and per-channel factors (runtime.model_runner's int8 layout; the kernel then
takes k_scale, v_scale [NB, Hkv, bs] and k_channel, v_channel [Hkv, D] after context_lens);
arithmetic is fp32.
"""
from __future__ import annotations

import math

from codegen.build import KernelSpec
from codegen.kernels import common
from codegen.kernels.common import exp_f32, kv_block_lines, loop_kinds, prefetch
from codegen.target import Target

KV_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}
SPLIT = 4  # independent partial sums per score vector
CHUNK_TOKENS = 128  # a sequence's keys are reduced in chunks of this many, merged in order
SPLIT_BELOW = 8  # (sequence, KV head) tasks a lane below which they are split (make_plan)
ROWS = 8  # rows of a prefill sequence a task takes when its rows are split


def make_paged_attention(num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                         kv_dtype: str = "fp32", *, target: Target):
    gpu = target.is_gpu
    from tvm.script import tirx as T

    OUTER, VEC = loop_kinds(gpu)
    SCOPE = "local" if gpu else "global"  # small 'global' buffers live on the CPU stack

    if num_q_heads % num_kv_heads or head_dim % SPLIT:
        raise ValueError(f"need num_q_heads % num_kv_heads == 0 and head_dim % {SPLIT} == 0")
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {sorted(KV_DTYPES)}, got {kv_dtype!r}")
    if block_size > 256:
        raise ValueError(f"block_size must be at most 256, got {block_size}")
    HQ, HKV, D, BS = num_q_heads, num_kv_heads, head_dim, block_size
    GROUP = HQ // HKV
    W = 1 << (BS - 1).bit_length()  # lanes of a block's score vector: BS rounded up to a power of two
    KV = KV_DTYPES[kv_dtype]
    scale = 1.0 / math.sqrt(D)
    NEG = -3.0e38

    # A block's max and sum fold W lanes pairwise (log2 W vector steps): a serial fold over
    # the lanes is a 4-cycle-latency chain per key, longer than all of the block's FMAs.
    @T.macro
    def halve(buf, h, width, take_max):
        for l in VEC(width):
            if take_max:
                buf[h, l] = T.max(buf[h, l], buf[h, l + width])
            else:
                buf[h, l] = buf[h, l] + buf[h, l + width]

    @T.macro
    def fold_lanes(buf, h, take_max):
        if W >= 256:
            halve(buf, h, 128, take_max)
        if W >= 128:
            halve(buf, h, 64, take_max)
        if W >= 64:
            halve(buf, h, 32, take_max)
        if W >= 32:
            halve(buf, h, 16, take_max)
        if W >= 16:
            halve(buf, h, 8, take_max)
        if W >= 8:
            halve(buf, h, 4, take_max)
        if W >= 4:
            halve(buf, h, 2, take_max)
        if W >= 2:
            halve(buf, h, 1, take_max)

    INT8 = kv_dtype == "int8"
    # Software prefetch, into L2, of the K and V AHEAD blocks ahead (and of the next task's first blocks): a
    # sequence's blocks lie anywhere in the pool, so the hardware prefetcher stops at each one. Decode of 64
    # sequences of 80 tokens, blocks scattered (Zen 4, 2 threads, a layer): bf16 286 -> 188 us, fp32 454 -> 417;
    # 300 tokens bf16 1005 -> 668; one block ahead, or into L1, gained less, and 3+ ahead lost.
    AHEAD, LOC = 2, 2
    K_ROWS_PER_LINE, V_LINES_PER_ROW, V_PER_LINE = kv_block_lines(KV, BS, D)
    CB = max(1, CHUNK_TOKENS // BS)  # blocks a chunk
    CHUNK = CB * BS

    @T.macro
    def prefetch_block(k_cache, v_cache, blk, g):
        for r in T.unroll(D // K_ROWS_PER_LINE):
            T.evaluate(prefetch(k_cache, blk, g, r * K_ROWS_PER_LINE, 0, locality=LOC))
        for jj in T.unroll(BS):
            for c in T.unroll(V_LINES_PER_ROW):
                T.evaluate(prefetch(v_cache, blk, g, jj, c * V_PER_LINE, locality=LOC))

    # the block AHEAD blocks ahead is fetched a slice per step of the key loop (D // SPLIT steps), not all at once
    # (a whole fp32 block is 128 lines, more than a core keeps in flight): decode of 64 sequences of 90 tokens, 30
    # layers' blocks scattered (Zen 4, 2 threads, 2026-12-07, three alternating runs): fp32 16.2 -> 12.3-13.7 ms a
    # step at block size 16, 14.2-14.9 -> 12.6-14.7 at 8; bf16 7.5-8.4 -> 6.5-6.7 (16), 8.6-9.9 -> 7.4-8.1 (8)
    STEPS = D // SPLIT
    V_LINES = BS * V_LINES_PER_ROW
    V_PER_STEP = -(-V_LINES // STEPS)

    @T.macro
    def prefetch_slice(k_cache, v_cache, blk, g, dd):
        if K_ROWS_PER_LINE <= SPLIT:
            for r in T.unroll(SPLIT // K_ROWS_PER_LINE):
                T.evaluate(prefetch(k_cache, blk, g, dd * SPLIT + r * K_ROWS_PER_LINE, 0, locality=LOC))
        elif dd % (K_ROWS_PER_LINE // SPLIT) == 0:
            T.evaluate(prefetch(k_cache, blk, g, dd * SPLIT, 0, locality=LOC))
        for i in T.unroll(V_PER_STEP):
            if dd * V_PER_STEP + i < V_LINES:
                T.evaluate(prefetch(v_cache, blk, g, (dd * V_PER_STEP + i) // V_LINES_PER_ROW,
                                    (dd * V_PER_STEP + i) % V_LINES_PER_ROW * V_PER_LINE, locality=LOC))

    @T.macro
    def make_plan(plan, query_start, context_lens, num_seqs, lanes, max_chunks):
        """How a batch with fewer than SPLIT_BELOW (sequence, KV head) tasks a lane is spread (plan[1] = 1): a
        decode row's key chunks become tasks of their own (where `partials` holds them all; plan[2] = 1 when any
        does), a prefill sequence's rows groups of ROWS rows. plan[0]: the most tasks of one (sequence, KV head)."""
        plan[0] = 1
        plan[1] = 0
        plan[2] = 0
        if num_seqs * HKV < SPLIT_BELOW * lanes:
            plan[1] = 1
            for b in range(num_seqs):
                num_q = query_start[b + 1] - query_start[b]
                chunks = T.Cast("int64", (context_lens[b] + CHUNK - 1) // CHUNK)
                if num_q > 1:
                    plan[0] = T.max(plan[0], T.Cast("int64", (num_q + ROWS - 1) // ROWS))
                elif chunks > 1 and chunks <= max_chunks:
                    plan[0] = T.max(plan[0], chunks)
                    plan[2] = 1

    @T.macro
    def fold_chunk(acc, run_max, run_sum, tot_acc, tot_max, tot_sum, h):
        """Merges a chunk's softmax state into the row's total: the same code whichever task ran the chunk."""
        new_max = T.max(tot_max[h], run_max[h])
        a = exp_f32(tot_max[h] - new_max)
        c = exp_f32(run_max[h] - new_max)
        tot_sum[h] = tot_sum[h] * a + run_sum[h] * c
        tot_max[h] = new_max
        for d in VEC(D):
            tot_acc[h, d] = tot_acc[h, d] * a + acc[h, d] * c

    @T.macro
    def finish(out, row, g, h, acc, run_sum, v_channel):
        for d in VEC(D):
            if INT8:
                out[row, g * GROUP + h, d] = acc[h, d] * v_channel[g, d] / run_sum[h]
            else:
                out[row, g * GROUP + h, d] = acc[h, d] / run_sum[h]

    @T.macro
    def attend(q, k_cache, v_cache, block_tables, query_start, context_lens, out, k_scale, v_scale, k_channel,
               v_channel, partials, num_seqs, lanes, max_chunks):
        """int8 (INT8): a key's score is (q x k_channel) . k_int8 x k_scale, a value's weight p x v_scale, and
        the output is scaled back by v_channel (runtime.model_runner.PagedKVCache's int8 layout)."""
        for lane in OUTER(lanes):
            plan = T.alloc_buffer((3,), "int64", scope=SCOPE)
            qs = T.alloc_buffer((GROUP, D), "float32", scope=SCOPE)
            run_max = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            run_sum = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            acc = T.alloc_buffer((GROUP, D), "float32", scope=SCOPE)
            tot_max = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            tot_sum = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            tot_acc = T.alloc_buffer((GROUP, D), "float32", scope=SCOPE)
            part = T.alloc_buffer((SPLIT, GROUP, BS), "float32", scope=SCOPE)
            probs = T.alloc_buffer((GROUP, W), "float32", scope=SCOPE)
            fold = T.alloc_buffer((GROUP, W), "float32", scope=SCOPE)
            make_plan(plan, query_start, context_lens, num_seqs, lanes, max_chunks)
            # tasks part-major, (part, sequence, KV head), dealt round-robin to the lanes
            num_tasks = plan[0] * num_seqs * HKV
            for k in range((num_tasks - lane + lanes - 1) // lanes):
                task = lane + k * lanes
                c = T.Cast("int32", task // (num_seqs * HKV))
                b = task % (num_seqs * HKV) // HKV
                g = task % HKV
                if not gpu:  # the lane's next task's first blocks, while this one runs
                    nxt = task + lanes
                    if nxt < num_tasks:
                        nxt_b = nxt % (num_seqs * HKV) // HKV
                        nxt_first = T.if_then_else(query_start[nxt_b + 1] - query_start[nxt_b] == 1,
                                                   T.Cast("int32", nxt // (num_seqs * HKV)) * CB, 0)
                        for a in T.unroll(AHEAD):
                            if (nxt_first + a) * BS < context_lens[nxt_b]:
                                prefetch_block(k_cache, v_cache, block_tables[nxt_b, nxt_first + a], nxt % HKV)
                q_begin = query_start[b]
                num_q = query_start[b + 1] - q_begin
                chunks = (context_lens[b] + CHUNK - 1) // CHUNK
                split = plan[1] == 1 and num_q == 1 and chunks > 1 and T.Cast("int64", chunks) <= max_chunks
                split_rows = plan[1] == 1 and num_q > 1
                if c == 0 or (split and c < chunks) or (split_rows and c * ROWS < num_q):
                    row_lo = T.if_then_else(split_rows, c * ROWS, 0)
                    row_hi = T.if_then_else(split_rows, T.min(num_q, c * ROWS + ROWS), num_q)
                    for ri in range(row_hi - row_lo):
                        i = row_lo + ri
                        row = q_begin + i
                        num_keys = context_lens[b] - num_q + i + 1
                        num_blocks = (num_keys + BS - 1) // BS
                        num_chunks = (num_blocks + CB - 1) // CB
                        for h in range(GROUP):
                            tot_max[h] = T.float32(NEG)
                            tot_sum[h] = T.float32(0)
                            for d in VEC(D):
                                if INT8:
                                    qs[h, d] = q[row, g * GROUP + h, d] * T.float32(scale) * k_channel[g, d]
                                else:
                                    qs[h, d] = q[row, g * GROUP + h, d] * T.float32(scale)
                                tot_acc[h, d] = T.float32(0)
                        first = T.if_then_else(split, c, 0)
                        last = T.if_then_else(split, c + 1, num_chunks)
                        # loops count from 0: with range(start, stop) here every chunk read chunk 0's blocks (TVM 0.27)
                        for ci in range(last - first):
                            cc = first + ci
                            for h in range(GROUP):
                                run_max[h] = T.float32(NEG)
                                run_sum[h] = T.float32(0)
                                for d in VEC(D):
                                    acc[h, d] = T.float32(0)
                            for kj in range(T.min(CB, num_blocks - cc * CB)):
                                kb = cc * CB + kj
                                blk = block_tables[b, kb]
                                count = T.min(BS, num_keys - kb * BS)
                                for c4 in T.unroll(SPLIT):
                                    for h in T.unroll(GROUP):
                                        for jj in VEC(BS):
                                            part[c4, h, jj] = T.float32(0)
                                for dd in range(D // SPLIT):
                                    if not gpu:
                                        if kb + AHEAD < T.min(last * CB, num_blocks):
                                            prefetch_slice(k_cache, v_cache, block_tables[b, kb + AHEAD], g, dd)
                                    for c4 in T.unroll(SPLIT):
                                        for h in T.unroll(GROUP):
                                            for jj in VEC(BS):
                                                part[c4, h, jj] = part[c4, h, jj] + qs[h, dd * SPLIT + c4] * T.Cast(
                                                    "float32", k_cache[blk, g, dd * SPLIT + c4, jj])
                                if INT8:
                                    for c4 in T.unroll(SPLIT):
                                        for h in T.unroll(GROUP):
                                            for jj in VEC(BS):
                                                part[c4, h, jj] = part[c4, h, jj] * k_scale[blk, g, jj]
                                for h in T.unroll(GROUP):
                                    for jj in VEC(W):
                                        probs[h, jj] = T.Select(
                                            jj < count, (part[0, h, T.min(jj, BS - 1)] + part[1, h, T.min(jj, BS - 1)])
                                            + (part[2, h, T.min(jj, BS - 1)] + part[3, h, T.min(jj, BS - 1)]),
                                            T.float32(NEG))
                                        fold[h, jj] = probs[h, jj]
                                    fold_lanes(fold, h, True)
                                    fold[h, 0] = T.max(fold[h, 0], run_max[h])  # the new running max
                                    for jj in VEC(W):
                                        probs[h, jj] = T.Select(jj < count, exp_f32(probs[h, jj] - fold[h, 0]),
                                                                T.float32(0))
                                    alpha = exp_f32(run_max[h] - fold[h, 0])
                                    run_max[h] = fold[h, 0]
                                    for jj in VEC(W):
                                        fold[h, jj] = probs[h, jj]
                                    fold_lanes(fold, h, False)
                                    run_sum[h] = run_sum[h] * alpha + fold[h, 0]
                                    for d in VEC(D):
                                        acc[h, d] = acc[h, d] * alpha
                                if INT8:  # each value's weight carries its token's scale
                                    for h in T.unroll(GROUP):
                                        for jj in VEC(BS):
                                            probs[h, jj] = probs[h, jj] * v_scale[blk, g, jj]
                                for jj in range(count):
                                    for h in T.unroll(GROUP):  # GROUP x D/16 independent accumulators
                                        for d in VEC(D):
                                            acc[h, d] = acc[h, d] + probs[h, jj] * T.Cast("float32",
                                                                                           v_cache[blk, g, jj, d])
                            for h in range(GROUP):
                                if split:  # the chunk's state, for the merge below
                                    for d in VEC(D):
                                        partials[b, g * GROUP + h, cc, d] = acc[h, d]
                                    partials[b, g * GROUP + h, cc, D] = run_max[h]
                                    partials[b, g * GROUP + h, cc, D + 1] = run_sum[h]
                                elif num_chunks == 1:
                                    finish(out, row, g, h, acc, run_sum, v_channel)
                                else:
                                    fold_chunk(acc, run_max, run_sum, tot_acc, tot_max, tot_sum, h)
                        if not split and num_chunks > 1:
                            for h in range(GROUP):
                                finish(out, row, g, h, tot_acc, tot_sum, v_channel)

    @T.macro
    def merge(out, query_start, context_lens, v_channel, partials, num_seqs, lanes, max_chunks):
        """The split rows' chunk states merged in chunk order, as an unsplit task merges them."""
        for lane in OUTER(lanes):
            plan = T.alloc_buffer((3,), "int64", scope=SCOPE)
            run_max = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            run_sum = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            acc = T.alloc_buffer((GROUP, D), "float32", scope=SCOPE)
            tot_max = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            tot_sum = T.alloc_buffer((GROUP,), "float32", scope=SCOPE)
            tot_acc = T.alloc_buffer((GROUP, D), "float32", scope=SCOPE)
            make_plan(plan, query_start, context_lens, num_seqs, lanes, max_chunks)
            for k in range((num_seqs * HKV - lane + lanes - 1) // lanes):
                task = lane + k * lanes
                b = task // HKV
                g = task % HKV
                chunks = (context_lens[b] + CHUNK - 1) // CHUNK
                if (plan[1] == 1 and query_start[b + 1] - query_start[b] == 1 and chunks > 1
                        and T.Cast("int64", chunks) <= max_chunks):
                    for h in range(GROUP):
                        tot_max[h] = T.float32(NEG)
                        tot_sum[h] = T.float32(0)
                        for d in VEC(D):
                            tot_acc[h, d] = T.float32(0)
                        for cc in range(chunks):
                            for d in VEC(D):
                                acc[h, d] = partials[b, g * GROUP + h, cc, d]
                            run_max[h] = partials[b, g * GROUP + h, cc, D]
                            run_sum[h] = partials[b, g * GROUP + h, cc, D + 1]
                            fold_chunk(acc, run_max, run_sum, tot_acc, tot_max, tot_sum, h)
                        finish(out, query_start[b], g, h, tot_acc, tot_sum, v_channel)

    @T.macro
    def run(q, k_cache, v_cache, block_tables, query_start, context_lens, out, k_scale, v_scale, k_channel,
            v_channel, partials, num_seqs, lanes, max_chunks):
        attend(q, k_cache, v_cache, block_tables, query_start, context_lens, out, k_scale, v_scale, k_channel,
               v_channel, partials, num_seqs, lanes, max_chunks)
        if gpu:  # the host cannot read context_lens: the merge kernel always runs (and finds nothing unsplit)
            merge(out, query_start, context_lens, v_channel, partials, num_seqs, lanes, max_chunks)
        else:
            plan = T.alloc_buffer((3,), "int64", scope=SCOPE)
            make_plan(plan, query_start, context_lens, num_seqs, lanes, max_chunks)
            if plan[2] == 1:
                merge(out, query_start, context_lens, v_channel, partials, num_seqs, lanes, max_chunks)

    if INT8:
        @T.prim_func
        def paged_attention_int8(q_h: T.handle, k_h: T.handle, v_h: T.handle, tables_h: T.handle,
                                 qstart_h: T.handle, ctx_h: T.handle, ks_h: T.handle, vs_h: T.handle, kc_h: T.handle,
                                 vc_h: T.handle, out_h: T.handle, partials_h: T.handle, lanes: T.int64):
            T.func_attr({"tirx.noalias": True})
            num_tokens = T.int64()
            num_seqs = T.int64()
            num_seqs_p1 = T.int64()
            num_blocks = T.int64()
            max_blocks = T.int64()
            q = T.match_buffer(q_h, (num_tokens, HQ, D), "float32")
            k_cache = T.match_buffer(k_h, (num_blocks, HKV, D, BS), "int8")
            v_cache = T.match_buffer(v_h, (num_blocks, HKV, BS, D), "int8")
            block_tables = T.match_buffer(tables_h, (num_seqs, max_blocks), "int32")
            query_start = T.match_buffer(qstart_h, (num_seqs_p1,), "int32")
            context_lens = T.match_buffer(ctx_h, (num_seqs,), "int32")
            k_scale = T.match_buffer(ks_h, (num_blocks, HKV, BS), "float32")
            v_scale = T.match_buffer(vs_h, (num_blocks, HKV, BS), "float32")
            k_channel = T.match_buffer(kc_h, (HKV, D), "float32")
            v_channel = T.match_buffer(vc_h, (HKV, D), "float32")
            out = T.match_buffer(out_h, (num_tokens, HQ, D), "float32")
            max_chunks = T.int64()
            partials = T.match_buffer(partials_h, (num_seqs, HQ, max_chunks, D + 2), "float32")
            run(q, k_cache, v_cache, block_tables, query_start, context_lens, out, k_scale, v_scale, k_channel,
                v_channel, partials, num_seqs, lanes, max_chunks)

        return paged_attention_int8

    @T.prim_func
    def paged_attention(q_h: T.handle, k_h: T.handle, v_h: T.handle, tables_h: T.handle,
                        qstart_h: T.handle, ctx_h: T.handle, out_h: T.handle, partials_h: T.handle, lanes: T.int64):
        T.func_attr({"tirx.noalias": True})
        num_tokens = T.int64()
        num_seqs = T.int64()
        num_seqs_p1 = T.int64()
        num_blocks = T.int64()
        max_blocks = T.int64()
        q = T.match_buffer(q_h, (num_tokens, HQ, D), "float32")
        k_cache = T.match_buffer(k_h, (num_blocks, HKV, D, BS), KV)  # keys transposed per block
        v_cache = T.match_buffer(v_h, (num_blocks, HKV, BS, D), KV)
        block_tables = T.match_buffer(tables_h, (num_seqs, max_blocks), "int32")
        query_start = T.match_buffer(qstart_h, (num_seqs_p1,), "int32")
        context_lens = T.match_buffer(ctx_h, (num_seqs,), "int32")
        out = T.match_buffer(out_h, (num_tokens, HQ, D), "float32")
        max_chunks = T.int64()
        partials = T.match_buffer(partials_h, (num_seqs, HQ, max_chunks, D + 2), "float32")
        run(q, k_cache, v_cache, block_tables, query_start, context_lens, out, k_cache, v_cache, q, q, partials,
            num_seqs, lanes, max_chunks)

    return paged_attention


def paged_attention_config(target, **params) -> dict:
    return {}


def schedule_paged_attention(sch, cfg: dict) -> None:
    """The loop structure is written into the TIR above; nothing left to schedule."""


SPEC = KernelSpec("paged_attention", make_paged_attention, paged_attention_config, schedule_paged_attention,
                  args=("q", "k_cache", "v_cache", "block_tables", "query_start", "context_lens", "out", "partials",
                        "lanes"),
                  source_file=__file__, scheduled=True,
                  depends=(common.__file__,))
