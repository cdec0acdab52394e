"""A single-sequence attention backend on the TVM rope_qkv and paged-attention kernels.

Same interface as operators.llama.ContiguousKVCache (`attend`, `advance`, `length`):
K/V live in per-layer paged caches in the kernels' layout (keys [num_blocks, Hkv, D,
block_size], values [num_blocks, Hkv, block_size, D]) whose block table is simply
0, 1, 2, ...; the engine's runner (runtime/model_runner.py) calls the same kernels with
its real block tables instead.
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
        self.num_heads = config.num_heads
        self.block_size = block_size
        self.block_table = torch.arange(num_blocks, dtype=torch.int32)[None, :]  # [1, num_blocks]
        self.length = 0  # tokens whose K/V are complete in every layer
        self._step: tuple | None = None

    def _metadata(self, start: int, num_tokens: int) -> tuple[torch.Tensor, ...]:
        """Slot blocks/offsets, query_start and context_lens of this step, built once for every layer."""
        if self._step is None or self._step[:2] != (start, num_tokens):
            positions = torch.arange(start, start + num_tokens, dtype=torch.int32)
            self._step = (start, num_tokens, positions // self.block_size, positions % self.block_size,
                          torch.tensor([0, num_tokens], dtype=torch.int32),
                          torch.tensor([start + num_tokens], dtype=torch.int32))
        return self._step[2:]

    def attend(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        blocks, offsets, query_start, context_lens = self._metadata(self.length, qkv.shape[0])
        k_cache, v_cache = self.k[layer], self.v[layer]
        q = ops.rope_qkv(qkv, cos, sin, k_cache, v_cache, blocks, offsets, self.num_heads)
        return ops.paged_attention(q, k_cache, v_cache, self.block_table, query_start, context_lens)

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens
