"""Turns a scheduled batch into tensors, runs one forward pass over the ragged batch, returns logits.

The KV cache is one preallocated pair of tensors [layers, Hkv, num_blocks, block_size, D];
block ids from runtime.kv_blocks index it. `PagedAttention` is the model's attention
backend for a ragged batch: single-token rows (decodes) attend together in one gather +
SDPA per layer, and so do multi-token rows (prefill chunks, padded to the longest), each
attending to its cached prefix plus itself, causally. Rows never see each other's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from operators.llama import LlamaModel
from runtime.batch import ScheduledBatch


class PagedKVCache:
    """K and V blocks, head-major ([L, Hkv, NB, bs, D]) so a gather of blocks along NB leaves
    each head's context contiguous for the attention matmuls (no second copy)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32):
        shape = (num_layers, num_kv_heads, num_blocks, block_size, head_dim)
        # Zeroed, not empty: masked slots of a gathered block must not hold NaNs (0 * NaN = NaN).
        self.k = torch.zeros(shape, dtype=dtype)  # [L, Hkv, NB, bs, D]
        self.v = torch.zeros(shape, dtype=dtype)  # [L, Hkv, NB, bs, D]
        self.block_size = block_size

    def block_view(self, layer: int, which: str = "k") -> torch.Tensor:
        """[NB, bs, Hkv, D] view of one layer, the layout of operators.tensor_ops.paged_decode_attention."""
        return getattr(self, which)[layer].permute(1, 2, 0, 3)

    @staticmethod
    def bytes_per_block(config, block_size: int, dtype: torch.dtype = torch.float32) -> int:
        return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def copy_blocks(self, copies) -> None:
        for src, dst in copies:
            self.k[:, :, dst] = self.k[:, :, src]
            self.v[:, :, dst] = self.v[:, :, src]


@dataclass
class AttentionGroup:
    """Rows attended together in one padded attention call: P rows of up to Tq query tokens each."""

    query_index: torch.Tensor  # [P, Tq] int64 flat batch rows of each row's queries (padding repeats the last one)
    block_tables: torch.Tensor  # [P, MB] int64 (padded with block 0, masked out)
    mask: torch.Tensor  # [P, 1, Tq, MB * block_size] bool, True where a query may attend
    output_index: torch.Tensor | None  # [n] rows of the [P * Tq] output that are real tokens (None: all are)


@dataclass
class ForwardInputs:
    token_ids: torch.Tensor  # [T] int64, decode rows first, then prefill chunks
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64, flat slot (block * block_size + offset) of each token's K/V
    groups: list[AttentionGroup]  # decodes, then prefill chunks; their outputs concatenate in token order
    logits_indices: torch.Tensor  # [N] int64, flat rows whose logits the batch asked for, in batch order


class PagedAttention:
    """AttentionBackend over a PagedKVCache for one ForwardInputs.

    Each group gathers its rows' blocks once per layer and runs one SDPA over the padded rows,
    so the Python cost per layer does not grow with the number of sequences.
    """

    def __init__(self, cache: PagedKVCache, inputs: ForwardInputs, num_q_heads: int):
        self.cache = cache
        self.inputs = inputs
        self.num_q_heads = num_q_heads

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        inp = self.inputs
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]  # [Hkv, NB, bs, D]
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, inp.slot_mapping, k.transpose(0, 1))
        v_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, inp.slot_mapping, v.transpose(0, 1))
        outputs = []
        for g in inp.groups:
            rows, width = g.query_index.shape
            tables = g.block_tables.view(-1)  # [P * MB]
            keys = k_cache.index_select(1, tables).view(num_kv_heads, rows, -1, head_dim).transpose(0, 1)  # [P, Hkv, S, D]
            values = v_cache.index_select(1, tables).view(num_kv_heads, rows, -1, head_dim).transpose(0, 1)  # [P, Hkv, S, D]
            queries = q[g.query_index.view(-1)].view(rows, width, self.num_q_heads, head_dim).transpose(1, 2)  # [P, Hq, Tq, D]
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=g.mask, enable_gqa=True)  # [P, Hq, Tq, D]
            out = out.transpose(1, 2).reshape(rows * width, self.num_q_heads, head_dim)  # [P * Tq, Hq, D]
            outputs.append(out if g.output_index is None else out[g.output_index])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # [T, Hq, D]


def _pad_limited_groups(rows: list[int], lengths: list[int], max_padding: float = 2.0) -> list[list[int]]:
    """Split rows (longest first) into consecutive groups whose padded size is at most max_padding x real."""
    groups: list[list[int]] = []
    for i in rows:
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= max_padding * (
                sum(lengths[j] for j in groups[-1]) + lengths[i]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int):
        c = model.config
        self.model = model
        self.block_size = block_size
        self.cache = PagedKVCache(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim)

    def prepare_batch(self, batch: ScheduledBatch) -> ForwardInputs:
        bs = self.block_size
        # Decodes first, then prefill chunks longest first (so padding within a group stays small).
        order = sorted(range(len(batch.rows)), key=lambda i: (batch.rows[i].num_tokens > 1, -batch.rows[i].num_tokens))
        token_ids, positions, slots, first_token = [], [], [], {}
        for i in order:
            row = batch.rows[i]
            first_token[i] = len(token_ids)
            table = row.block_table
            pos = range(row.start, row.context_len)
            token_ids += row.token_ids
            positions += pos
            slots += [table[p // bs] * bs + p % bs for p in pos]
        decode = [i for i in order if batch.rows[i].num_tokens == 1]
        parts = ([decode] if decode else []) + _pad_limited_groups([i for i in order if batch.rows[i].num_tokens > 1],
                                                                    [r.num_tokens for r in batch.rows])
        groups = [self._group([batch.rows[i] for i in part], [first_token[i] for i in part]) for part in parts]
        logits_indices = [first_token[i] + off for i, row in enumerate(batch.rows) for off in row.logit_offsets]
        return ForwardInputs(
            token_ids=torch.tensor(token_ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            groups=groups,
            logits_indices=torch.tensor(logits_indices, dtype=torch.long),
        )

    def _group(self, rows, first_tokens: list[int]) -> AttentionGroup:
        bs = self.block_size
        width = max(r.num_tokens for r in rows)
        max_blocks = max(-(-r.context_len // bs) for r in rows)
        query_index, tables, query_pos, output_index = [], [], [], []
        for p, (row, first) in enumerate(zip(rows, first_tokens)):
            t = row.num_tokens
            query_index.append([first + min(j, t - 1) for j in range(width)])
            query_pos.append([row.start + min(j, t - 1) for j in range(width)])
            table = list(row.block_table[:max_blocks])
            tables.append(table + [0] * (max_blocks - len(table)))
            output_index += range(p * width, p * width + t)
        query_pos = torch.tensor(query_pos, dtype=torch.long)  # [P, Tq]
        mask = torch.arange(max_blocks * bs)[None, None, :] <= query_pos[:, :, None]  # [P, Tq, S] causal, own row only
        return AttentionGroup(
            query_index=torch.tensor(query_index, dtype=torch.long),
            block_tables=torch.tensor(tables, dtype=torch.long),
            mask=mask[:, None],  # [P, 1, Tq, S]
            output_index=None if width == 1 else torch.tensor(output_index, dtype=torch.long),
        )

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [batch.num_logits, V] for the rows' logit_offsets, in batch order."""
        inputs = self.prepare_batch(batch)
        self.cache.copy_blocks(batch.block_copies)
        attention = PagedAttention(self.cache, inputs, self.model.config.num_heads)
        hidden = self.model.forward(inputs.token_ids, inputs.positions, attention)  # [T, H]
        return self.model.compute_logits(hidden[inputs.logits_indices])  # [N, V]
