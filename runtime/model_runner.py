"""Turns a scheduled batch into tensors, runs one forward pass over the ragged batch, returns logits.

The KV cache is one preallocated pair of tensors [layers, num_blocks, block_size, Hkv, D];
block ids from runtime.kv_blocks index it. `PagedAttention` is the model's attention
backend for a ragged batch: single-token rows (decodes) attend together in one batched
gather + matmul; multi-token rows (prefill chunks) attend one by one to their cached
prefix plus themselves, causally. Rows never see each other's tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators.llama import LlamaModel
from runtime.batch import ScheduledBatch


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32):
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        # Zeroed, not empty: masked slots of a gathered block must not hold NaNs (0 * NaN = NaN).
        self.k = torch.zeros(shape, dtype=dtype)  # [L, NB, bs, Hkv, D]
        self.v = torch.zeros(shape, dtype=dtype)  # [L, NB, bs, Hkv, D]
        self.block_size = block_size

    @staticmethod
    def bytes_per_block(config, block_size: int, dtype: torch.dtype = torch.float32) -> int:
        return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def copy_blocks(self, copies) -> None:
        for src, dst in copies:
            self.k[:, dst] = self.k[:, src]
            self.v[:, dst] = self.v[:, src]


@dataclass
class PrefillChunk:
    token_begin: int  # rows token_begin:token_end of the flat batch
    token_end: int
    start: int  # position of the chunk's first token
    blocks: torch.Tensor  # [num_blocks_of_context] int64
    mask: torch.Tensor  # [chunk_len, context_len] 0 / -inf, causal


@dataclass
class ForwardInputs:
    token_ids: torch.Tensor  # [T] int64, decode rows first
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64, flat slot (block * block_size + offset) of each token's K/V
    num_decode: int  # the first num_decode tokens are one-token rows
    decode_block_tables: torch.Tensor  # [num_decode, max_blocks] int64 (padded with block 0)
    decode_mask: torch.Tensor  # [num_decode, 1, 1, max_blocks * block_size] 0 / -inf past each context
    prefills: list[PrefillChunk]
    logits_indices: torch.Tensor  # [N] int64, flat rows whose logits the batch asked for, in batch order


class PagedAttention:
    """AttentionBackend over a PagedKVCache for one ForwardInputs."""

    def __init__(self, cache: PagedKVCache, inputs: ForwardInputs, num_q_heads: int):
        self.cache = cache
        self.inputs = inputs
        self.num_q_heads = num_q_heads

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        inp, bs = self.inputs, self.cache.block_size
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]  # [NB, bs, Hkv, D]
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, inp.slot_mapping, k)
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, inp.slot_mapping, v)
        group = self.num_q_heads // num_kv_heads
        q = q * (1.0 / math.sqrt(head_dim))  # [T, Hq, D]
        outputs = []
        nd = inp.num_decode
        if nd:
            keys = k_cache[inp.decode_block_tables].view(nd, -1, num_kv_heads, head_dim)  # [B, S, Hkv, D]
            values = v_cache[inp.decode_block_tables].view(nd, -1, num_kv_heads, head_dim)  # [B, S, Hkv, D]
            qg = q[:nd].view(nd, num_kv_heads, group, head_dim)  # [B, Hkv, G, D]
            scores = torch.einsum("bhgd,bshd->bhgs", qg, keys) + inp.decode_mask  # [B, Hkv, G, S]
            probs = torch.softmax(scores, dim=-1)
            out = torch.einsum("bhgs,bshd->bhgd", probs, values)  # [B, Hkv, G, D]
            outputs.append(out.reshape(nd, self.num_q_heads, head_dim))
        for chunk in inp.prefills:
            n = chunk.token_end - chunk.token_begin
            if chunk.start == 0:  # nothing cached before the chunk: its own K/V are the whole context
                keys, values = k[chunk.token_begin : chunk.token_end], v[chunk.token_begin : chunk.token_end]
            else:
                ctx = chunk.start + n
                keys = k_cache[chunk.blocks].view(-1, num_kv_heads, head_dim)[:ctx]  # [S, Hkv, D]
                values = v_cache[chunk.blocks].view(-1, num_kv_heads, head_dim)[:ctx]  # [S, Hkv, D]
            qg = q[chunk.token_begin : chunk.token_end].view(n, num_kv_heads, group, head_dim)  # [t, Hkv, G, D]
            scores = torch.einsum("thgd,shd->hgts", qg, keys) + chunk.mask  # [Hkv, G, t, S]
            probs = torch.softmax(scores, dim=-1)
            out = torch.einsum("hgts,shd->thgd", probs, values)  # [t, Hkv, G, D]
            outputs.append(out.reshape(n, self.num_q_heads, head_dim))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # [T, Hq, D]


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int):
        c = model.config
        self.model = model
        self.block_size = block_size
        self.cache = PagedKVCache(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim)

    def prepare_batch(self, batch: ScheduledBatch) -> ForwardInputs:
        bs = self.block_size
        order = sorted(range(len(batch.rows)), key=lambda i: batch.rows[i].num_tokens > 1)  # decodes first
        decode = [batch.rows[i] for i in order if batch.rows[i].num_tokens == 1]
        token_ids, positions, slots, prefills, first_token = [], [], [], [], {}
        for i in order:
            row = batch.rows[i]
            first_token[i] = len(token_ids)
            table = row.block_table
            pos = range(row.start, row.context_len)
            token_ids += row.token_ids
            positions += pos
            slots += [table[p // bs] * bs + p % bs for p in pos]
            if row.num_tokens > 1:
                key_pos = torch.arange(row.context_len)  # [S]
                query_pos = torch.arange(row.start, row.context_len)[:, None]  # [t, 1]
                mask = torch.zeros(row.num_tokens, row.context_len).masked_fill_(key_pos > query_pos, float("-inf"))
                blocks = torch.tensor(table[: -(-row.context_len // bs)], dtype=torch.long)
                prefills.append(PrefillChunk(first_token[i], len(token_ids), row.start, blocks, mask))
        max_blocks = max((-(-r.context_len // bs) for r in decode), default=0)
        tables = torch.tensor([list(r.block_table[:max_blocks]) + [0] * (max_blocks - len(r.block_table[:max_blocks]))
                               for r in decode], dtype=torch.long).view(len(decode), max_blocks)  # [B, MB]
        context_lens = torch.tensor([r.context_len for r in decode], dtype=torch.long)  # [B]
        key_pos = torch.arange(max_blocks * bs)  # [S]
        decode_mask = torch.zeros(len(decode), 1, 1, max_blocks * bs).masked_fill_(
            (key_pos[None, :] >= context_lens[:, None])[:, None, None, :], float("-inf"))  # [B, 1, 1, S]
        logits_indices = [first_token[i] + off for i, row in enumerate(batch.rows) for off in row.logit_offsets]
        return ForwardInputs(
            token_ids=torch.tensor(token_ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            num_decode=len(decode),
            decode_block_tables=tables,
            decode_mask=decode_mask,
            prefills=prefills,
            logits_indices=torch.tensor(logits_indices, dtype=torch.long),
        )

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [batch.num_logits, V] for the rows' logit_offsets, in batch order."""
        inputs = self.prepare_batch(batch)
        self.cache.copy_blocks(batch.block_copies)
        attention = PagedAttention(self.cache, inputs, self.model.config.num_heads)
        hidden = self.model.forward(inputs.token_ids, inputs.positions, attention)  # [T, H]
        return self.model.compute_logits(hidden[inputs.logits_indices])  # [N, V]
