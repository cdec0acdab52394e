"""GGUF block-quantized weights kept as raw blocks, with exact dequantization.

Layouts (ggml, 32 weights per block along a row):
  Q8_0: f16 d, int8 q[32]                      -> 34 bytes; w = d * q
  Q4_0: f16 d, u8 qs[16]                       -> 18 bytes; w = d * (q - 8)
  Q4_1: f16 d, f16 m, u8 qs[16]                -> 20 bytes; w = d * q + m
For the 4-bit types, weight j of a block is the low nibble of qs[j] and weight
j + 16 the high nibble of qs[j].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK_SIZE = 32
BYTES_PER_BLOCK = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
QUANT_TYPES = tuple(BYTES_PER_BLOCK)


@dataclass(frozen=True)
class QuantizedTensor:
    """A [rows, cols] matrix stored as GGUF blocks: `blocks` is uint8 [rows, cols/32 * bytes_per_block]."""

    qtype: str
    blocks: torch.Tensor
    rows: int
    cols: int

    def __post_init__(self) -> None:
        if self.qtype not in BYTES_PER_BLOCK:
            raise ValueError(f"unsupported quantization type {self.qtype!r}; expected one of {QUANT_TYPES}")
        if self.cols % BLOCK_SIZE:
            raise ValueError(f"row length {self.cols} is not a multiple of the block size {BLOCK_SIZE}")
        expected = (self.rows, self.cols // BLOCK_SIZE * BYTES_PER_BLOCK[self.qtype])
        if tuple(self.blocks.shape) != expected or self.blocks.dtype != torch.uint8:
            raise ValueError(f"{self.qtype} blocks have shape {tuple(self.blocks.shape)}, expected uint8 {expected}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def nbytes(self) -> int:
        return self.blocks.numel()

    def select_rows(self, index: torch.Tensor) -> "QuantizedTensor":
        """Rows permuted or gathered; blocks never straddle rows, so this is exact."""
        return QuantizedTensor(self.qtype, self.blocks[index].contiguous(), int(index.numel()), self.cols)

    def dequantize(self) -> torch.Tensor:
        """fp32 [rows, cols]."""
        return dequantize_blocks(self.qtype, self.blocks, self.cols)


def _f16(raw: np.ndarray) -> np.ndarray:
    """uint8 [..., 2] little-endian -> fp32 [..., 1]."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def dequantize_blocks(qtype: str, blocks: torch.Tensor, cols: int, with_min: bool = True) -> torch.Tensor:
    """fp32 [rows, cols]; with_min=False leaves out Q4_1's per-block min (d * q alone: the part a kernel
    multiplies by rounded activations while the min meets the exact sum of x)."""
    # numpy: its uint8 nibble arithmetic is ~10x faster than torch's here.
    rows = blocks.shape[0]
    b = blocks.numpy().reshape(rows, cols // BLOCK_SIZE, BYTES_PER_BLOCK[qtype])  # [rows, nblocks, bytes]
    d = _f16(b[..., 0:2])  # [rows, nblocks, 1]
    if qtype == "Q8_0":
        w = d * b[..., 2:].view(np.int8).astype(np.float32)  # [rows, nblocks, 32]
    else:
        qs = b[..., 4:] if qtype == "Q4_1" else b[..., 2:]  # [rows, nblocks, 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)  # [rows, nblocks, 32]
        if qtype == "Q4_1":
            w = d * q + _f16(b[..., 2:4]) if with_min else d * q
        else:
            w = d * (q - 8.0)
    return torch.from_numpy(w.reshape(rows, cols))


def quantize(qtype: str, weight: torch.Tensor) -> QuantizedTensor:
    """Round-to-nearest quantization of an fp32 [rows, cols] matrix (for tests and tiny models)."""
    rows, cols = weight.shape
    w = weight.float().reshape(rows, cols // BLOCK_SIZE, BLOCK_SIZE)
    if qtype == "Q8_0":
        amax = w.abs().amax(-1)
        d = (amax / 127.0).half()
        inv = torch.where(d.float() > 0, 1.0 / d.float(), torch.zeros_like(amax))
        q = torch.round(w * inv[..., None]).clamp(-127, 127).to(torch.int8)
        payload = [d[..., None].view(torch.uint8).reshape(rows, -1, 2), q.view(torch.uint8)]
    elif qtype == "Q4_0":
        idx = w.abs().argmax(-1, keepdim=True)
        signed_max = torch.gather(w, -1, idx).squeeze(-1)
        d = (signed_max / -8.0).half()
        inv = torch.where(d.float() != 0, 1.0 / d.float(), torch.zeros_like(signed_max))
        q = torch.round(w * inv[..., None] + 8.0).clamp(0, 15).to(torch.uint8)
        payload = [d[..., None].view(torch.uint8).reshape(rows, -1, 2), q[..., :16] | (q[..., 16:] << 4)]
    elif qtype == "Q4_1":
        lo, hi = w.amin(-1), w.amax(-1)
        d = ((hi - lo) / 15.0).half()
        m = lo.half()
        inv = torch.where(d.float() > 0, 1.0 / d.float(), torch.zeros_like(lo))
        q = torch.round((w - m.float()[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
        payload = [
            d[..., None].view(torch.uint8).reshape(rows, -1, 2),
            m[..., None].view(torch.uint8).reshape(rows, -1, 2),
            q[..., :16] | (q[..., 16:] << 4),
        ]
    else:
        raise ValueError(f"unsupported quantization type {qtype!r}")
    blocks = torch.cat(payload, dim=-1).reshape(rows, -1).contiguous()
    return QuantizedTensor(qtype, blocks, rows, cols)
