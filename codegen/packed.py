"""GGUF blocks repacked once at load into the layout the quantized kernels read.

GGUF interleaves each 32-weight block's f16 scale(s) with its quants, one row after
another. The kernels instead work on tiles of 16 rows, one vector lane per row, so the
packed form stores, for row tile `i` and block `b`:

    qs[i, b, j, l]      quant byte j of row 16i + l's block b (4-bit: byte j holds element
                        j in its low nibble and j + 16 in its high nibble, as in GGUF;
                        Q8_0: int8 element j, j < 32)
    scales[i, b, l]     f16 d of that block
    mins[i, b, l]       f16 m of that block (Q4_1 only)

Same bytes as the GGUF blocks (rows padded with zero blocks to a multiple of 16), just
transposed: one 16-byte load feeds 16 rows' lanes, and no horizontal sum is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from catalog.quant import BYTES_PER_BLOCK, QuantizedTensor

TILE_ROWS = 16


@dataclass(frozen=True)
class PackedWeight:
    qtype: str
    rows: int
    cols: int
    qs: torch.Tensor  # uint8 [tiles, blocks, 16, 16] (4-bit) | int8 [tiles, blocks, 32, 16] (Q8_0)
    scales: torch.Tensor  # f16 [tiles, blocks, 16]
    mins: torch.Tensor | None  # f16 [tiles, blocks, 16], Q4_1 only

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The kernel arguments after x, in order."""
        return (self.qs, self.scales) if self.mins is None else (self.qs, self.scales, self.mins)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)


def pack(weight: QuantizedTensor) -> PackedWeight:
    qtype, rows, cols = weight.qtype, weight.rows, weight.cols
    nb, nbytes = cols // 32, BYTES_PER_BLOCK[qtype]
    tiles = -(-rows // TILE_ROWS)
    blocks = torch.zeros(tiles * TILE_ROWS, nb, nbytes, dtype=torch.uint8)
    blocks[:rows] = weight.blocks.view(rows, nb, nbytes)
    blocks = blocks.view(tiles, TILE_ROWS, nb, nbytes)  # [tiles, lane, block, bytes]

    def f16(offset: int) -> torch.Tensor:  # [tiles, blocks, lane]
        raw = blocks[..., offset : offset + 2].contiguous().view(torch.float16)
        return raw.view(tiles, TILE_ROWS, nb).transpose(1, 2).contiguous()

    first_quant = {"Q4_1": 4, "Q4_0": 2, "Q8_0": 2}[qtype]
    qs = blocks[..., first_quant:].permute(0, 2, 3, 1).contiguous()  # [tiles, blocks, bytes, lane]
    if qtype == "Q8_0":
        qs = qs.view(torch.int8)
    return PackedWeight(qtype, rows, cols, qs, f16(0), f16(2) if qtype == "Q4_1" else None)
