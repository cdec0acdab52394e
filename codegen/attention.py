"""A single-sequence attention backend on the TVM paged-attention kernel.

Same interface as operators.llama.ContiguousKVCache (`attend`, `advance`, `length`):
K/V live in per-layer paged caches [num_blocks, block_size, Hkv, D] whose block table
is simply 0, 1, 2, ...; the engine's own paged cache calls codegen.ops.paged_attention
with its real block tables instead.
"""
from __future__ import annotations

import torch

from catalog.model_config import ModelConfig
from codegen import ops


class TvmSequenceKVCache:
    def __init__(self, config: ModelConfig, max_tokens: int, block_size: int = 16):
        num_blocks = -(-max_tokens // block_size)
        shape = (config.num_layers, num_blocks, block_size, config.num_kv_heads, config.head_dim)
        self.k = torch.zeros(shape)
        self.v = torch.zeros(shape)
        self.block_size = block_size
        self.block_table = torch.arange(num_blocks, dtype=torch.int32)[None, :]  # [1, num_blocks]
        self.length = 0  # tokens whose K/V are complete in every layer
        self._flat_k = self.k.view(config.num_layers, -1, config.num_kv_heads, config.head_dim)
        self._flat_v = self.v.view(config.num_layers, -1, config.num_kv_heads, config.head_dim)
        self._step: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    def _metadata(self, start: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """query_start, context_lens of this step, built once and shared by every layer."""
        if self._step is None or self._step[:2] != (start, num_tokens):
            self._step = (start, num_tokens, torch.tensor([0, num_tokens], dtype=torch.int32),
                          torch.tensor([start + num_tokens], dtype=torch.int32))
        return self._step[2], self._step[3]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, end = self.length, self.length + q.shape[0]
        self._flat_k[layer, start:end].copy_(k)  # [T, Hkv, D] into [num_blocks * block_size, Hkv, D]
        self._flat_v[layer, start:end].copy_(v)
        query_start, context_lens = self._metadata(start, q.shape[0])
        return ops.paged_attention(q, self.k[layer], self.v[layer], self.block_table, query_start, context_lens)

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens
