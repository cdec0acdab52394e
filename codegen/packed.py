"""GGUF blocks repacked once at load into the layout the quantized kernels read.

GGUF interleaves each 32-weight block's f16 scale(s) with its quants, one row after
another. The kernels instead work on tiles of 16 rows, one 32-bit lane per row, so the
packed form stores, for row tile `i` and block `b`:

    qs[i, b, g, 4l + c] quant byte 4g + c of row 16i + l's block b: one 64-byte vector
                        holds 4 consecutive bytes of each of the 16 rows, the operand
                        shape of a VNNI dot product (16 lanes x 4 bytes)
                        4-bit (g < 4): byte j holds element j in its low nibble and
                        j + 16 in its high nibble, as in GGUF
                        Q8_0 (g < 8): element j as offset binary (int8 + 128), so the
                        unsigned operand of the dot product needs no sign fix-up per call
    scales[i, b, l]     f16 d of that block
    mins[i, b, l]       f16 m of that block (Q4_1 only)

Same number of bytes as the GGUF blocks (rows padded with zero blocks to a multiple of
16), transposed and, for Q8_0, with the sign bit flipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from catalog.quant import BYTES_PER_BLOCK, QuantizedTensor
from operators.host_memory import resident

TILE_ROWS = 16
GROUP_BYTES = 4  # consecutive quant bytes of one row in one 32-bit lane
QUANT_BYTES = {"Q4_1": 16, "Q4_0": 16, "Q8_0": 32}  # quant bytes per 32-weight block
Q8_OFFSET = 128  # packed Q8_0 byte = int8 quant + Q8_OFFSET


@dataclass(frozen=True)
class PackedWeight:
    qtype: str
    rows: int
    cols: int
    qs: torch.Tensor  # uint8 [tiles, blocks, groups, 64]: groups 4 (4-bit) | 8 (Q8_0)
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


def groups(qtype: str) -> int:
    return QUANT_BYTES[qtype] // GROUP_BYTES


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

    first_quant = nbytes - QUANT_BYTES[qtype]
    quants = blocks[..., first_quant:]  # [tiles, lane, block, quant bytes]
    if qtype == "Q8_0":
        quants = quants ^ Q8_OFFSET  # padding rows become 128 = quant 0, still zero weights
    grouped = quants.reshape(tiles, TILE_ROWS, nb, groups(qtype), GROUP_BYTES)  # [tiles, lane, block, g, c]
    qs = grouped.permute(0, 2, 3, 1, 4).reshape(tiles, nb, groups(qtype), TILE_ROWS * GROUP_BYTES).contiguous()
    # every token reads them whole: on huge pages (operators.host_memory)
    return PackedWeight(qtype, rows, cols, resident(qs), resident(f16(0)),
                        resident(f16(2)) if qtype == "Q4_1" else None)
