"""Host buffers for the engine's two big consumers: the KV pool (lazily zero-filled) and the packed weights (on
transparent huge pages).

The KV pool is anonymous private memory: the OS zero-fills it 4 KiB at a time as blocks are first written, so a
pool costs nothing until used (torch.zeros writes every byte up front: ~0.2 s and its whole size in RSS a GiB,
paid by every new engine). Private, not shared: a shared anonymous mapping is shmem, whose faults cost more (W1,
Zen 4: the K/V writes of the decode steps 0.57-0.70 s shared, 0.24 s private). Not on huge pages either: a fault
on a huge page zero-fills (and may first compact) 2 MiB, which stalled the steps that open new blocks for 20-70
ms each (RoPE + K/V writes of W1's decode steps 0.65 s).

A decode step streams every weight matrix whole: tens of megabytes over thousands of 4 KiB pages, a TLB miss every
4 KiB. Weights are packed once at load into chunks madvised for huge pages (Linux THP in its usual 'madvise'
mode; elsewhere small pages, same contents) and touched right away. A batch-1 token's quantized linears and
lm_head (Zen 4, min of 40 interleaved sweeps): 4.78-5.33 -> 4.51-4.78 ms.
"""
from __future__ import annotations

import math
import mmap
import threading

import torch

HUGE_PAGE = 2 << 20


def _mapping(nbytes: int, huge: bool) -> torch.Tensor:
    """uint8 [nbytes] in a fresh anonymous private mapping, zero until written; 2 MiB aligned when `huge`."""
    pad = HUGE_PAGE if huge else 0
    region = mmap.mmap(-1, max(1, nbytes + pad), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge and hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
        region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # the tensor keeps the mapping alive
    start = -raw.data_ptr() % HUGE_PAGE if huge else 0
    return raw[start:start + nbytes]


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor whose pages the OS fills on first touch (page-aligned, as TVM's vector loads want)."""
    return _mapping(math.prod(shape) * dtype.itemsize, huge=False).view(dtype).view(shape)


class _Chunks:
    """Bump allocation of long-lived buffers from huge-page chunks: a model's weight matrices are mostly under 2
    MiB each (a SmolLM2 layer's Q4_1 gate/up quants: 0.9 MB), too small for pages of their own, so they are laid
    back to back. A chunk lives as long as any buffer in it; its untouched tail costs no memory."""

    SIZE = 32 << 20
    ALIGN = 64

    def __init__(self):
        self._lock = threading.Lock()
        self._chunk: torch.Tensor | None = None
        self._used = 0

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 [nbytes] buffer, 64-byte aligned."""
        if nbytes > self.SIZE // 2:
            return _mapping(nbytes, huge=True)
        with self._lock:
            if self._chunk is None or self._used + nbytes > self.SIZE:
                self._chunk, self._used = _mapping(self.SIZE, huge=True), 0
            out = self._chunk[self._used:self._used + nbytes]
            self._used += -(-nbytes // self.ALIGN) * self.ALIGN
            return out


_chunks = _Chunks()


def resident(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` on huge pages (contiguous, 64-byte aligned): for a buffer that every step reads whole, such as
    a packed weight, and that lives as long as its model."""
    out = _chunks.take(t.numel() * t.element_size()).view(t.dtype).view(t.shape)
    out.copy_(t)
    return out
