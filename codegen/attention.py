"""A single-sequence attention backend on the TVM paged-attention kernel.

Same interface as operators.llama.ContiguousKVCache (`attend`, `advance`, `length`):
K/V live in per-layer paged caches in the kernel's layout (keys [num_blocks, Hkv, D,
block_size], values [num_blocks, Hkv, block_size, D]) whose block table is simply 0, 1, 2, ...; the engine's own paged cache calls codegen.ops.paged_attention
with its real block tables instead.
"""
from __future__ import annotations

import torch

from catalog.model_config import ModelConfig
from codegen import ops


class TvmSequenceKVCache:
    def __init__(self, config: ModelConfig, max_tokens: int, block_size: int = 16):
        num_blocks = -(-max_tokens // block_size)
        heads, dim = config.num_kv_heads, config.head_dim
        self.k = torch.zeros(config.num_layers, num_blocks, heads, dim, block_size)
        self.v = torch.zeros(config.num_layers, num_blocks, heads, block_size, dim)
        self.block_size = block_size
        self.block_table = torch.arange(num_blocks, dtype=torch.int32)[None, :]  # [1, num_blocks]
        self.length = 0  # tokens whose K/V are complete in every layer
        self._step: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    def _metadata(self, start: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """query_start, context_lens of this step, built once and shared by every layer."""
        if self._step is None or self._step[:2] != (start, num_tokens):
            self._step = (start, num_tokens, torch.tensor([0, num_tokens], dtype=torch.int32),
                          torch.tensor([start + num_tokens], dtype=torch.int32))
        return self._step[2], self._step[3]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, end = self.length, self.length + q.shape[0]
        positions = torch.arange(start, end)
        blocks, offsets = positions // self.block_size, positions % self.block_size
        self.k[layer][blocks, :, :, offsets] = k  # [T, Hkv, D]
        self.v[layer][blocks, :, offsets, :] = v
        query_start, context_lens = self._metadata(start, q.shape[0])
        return ops.paged_attention(q, self.k[layer], self.v[layer], self.block_table, query_start, context_lens)

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens
