"""Greedy decoding's argmax over the vocabulary without the exact product of every vocabulary row.

Greedy sampling needs each row's best token, not its 49,152 logits; the lm_head is ~20% of a
SmolLM2 token's FLOPs. The screen (codegen.kernels.quant_gemv with screen=True) multiplies the
quantized lm_head by activations rounded to one int8 piece per 32-block (llama.cpp's; ~2x the
fp32-accurate GEMV's speed) and adds a bound per row: upper[t, v] >= logit[t, v] for every v,
since by Cauchy-Schwarz |logit - approx| = |(x - x_int8) . W[v]| <= ||x - x_int8|| ||W[v]|| (the
kernel widens it by SCREEN_SLACK and adds a term for fp32 rounding; for Q4_1, W[v] less its block mins, which the
kernel multiplies by the exact sum of x). Then per row:

    best  = argmax_v upper[v]            (excluded tokens set to -inf first; through the kernel's
                                          per-tile maxima, so no pass over [N, V])
    floor = logit[best], computed exactly (the row's best logit is at least this)
    keep  = {v : upper[v] >= floor}      (no other v can beat `floor`)
    token = argmax of the exact logits over `keep` (ties: the lowest id, as torch.argmax)

which is the argmax of the exact logits, not an approximation of it. On SmolLM2's W1 decode
`keep` holds ~2 rows on average (tens at most); a row that keeps more than MAX_CANDIDATES (a
flat distribution, e.g. an all-zero hidden state) gets its full logits from the linear instead.
Exact logits of kept rows come from catalog.quant's dequantized rows in fp32 (the linear's own
kernels round differently, by ~1e-7 relative: a tie that close may resolve to either token).

The selection runs in numpy: ~0.2 ms at one row and ~1.5 ms at 64 (hot, Zen 4), against ~0.6 and
~2 ms through the same steps as torch calls, whose dispatch dominates arrays this small.

A bf16 lm_head (codegen.linear.TvmBf16Linear, from quantized GGUF blocks) screens over those blocks too: its logits
are the bf16-rounded rows', which differ from the blocks' by at most ||bf16(W[v]) - W[v]|| ||x||, so each token's
floor is lowered by the largest such row error (measured when the screen is built) times ||x||, and the kept rows'
exact logits come from the bf16-rounded rows. The bf16 GEMM reads twice the bytes of Q8_0 blocks.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from catalog.quant import QuantizedTensor, dequantize_blocks
from codegen.build import get_kernel
from codegen.ops import aligned, tvm_view
from codegen.kernels.quant_common import num_tiles
from codegen.packed import TILE_ROWS
from operators.tensor_ops import argmax_rows

MAX_CANDIDATES = 1024  # kept rows of one token past which its full logits are cheaper to compute
_ROWS_PER_CHUNK = 4096  # rows dequantized at a time while the norms are taken (bounds its transient memory)


def _dequantized_chunks(weight: QuantizedTensor, with_min: bool = True):
    """The weight's rows dequantized _ROWS_PER_CHUNK at a time (catalog.quant.dequantize_blocks)."""
    for start in range(0, weight.rows, _ROWS_PER_CHUNK):
        yield dequantize_blocks(weight.qtype, weight.blocks[start : start + _ROWS_PER_CHUNK], weight.cols,
                                with_min=with_min)


def row_norms(weight: QuantizedTensor) -> torch.Tensor:
    """||W[v]||_2 [V] fp32 of the part of each row the screen multiplies by rounded activations: the dequantized row,
    less Q4_1's per-block min (which the kernel multiplies by the exact sum of x); rounded up (taken in fp64, then
    widened past fp32's rounding)."""
    norms = [rows.double().norm(dim=1) for rows in _dequantized_chunks(weight, with_min=False)]
    return (torch.cat(norms) * (1 + 2.0**-20)).float()


def rounding_error(weight: QuantizedTensor, dtype: torch.dtype) -> float:
    """max over rows v of ||W[v] rounded to dtype - W[v]||_2: how far a lm_head with `dtype` weights made from these
    blocks is from them, per unit of ||x|| (rounded up)."""
    largest = max((rows.to(dtype).double() - rows.double()).norm(dim=1).max().item()
                  for rows in _dequantized_chunks(weight))
    return largest * (1 + 2.0**-20)


class GreedyScreen:
    """The screen of one quantized, bias-free lm_head; `full(x)` computes whole rows of logits (the fallback).
    exact_dtype: the lm_head's own weights, the blocks dequantized (fp32) or rounded further to bf16."""

    def __init__(self, weight: QuantizedTensor, packed_weights: tuple, full, exact_dtype: torch.dtype = torch.float32):
        if exact_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"a greedy screen's exact rows are fp32 or bf16, not {exact_dtype}")
        self.weight = weight
        self._exact_dtype = exact_dtype
        # the floor's margin per unit of ||x||: the rounded rows' distance from the blocks the bounds are of; 1%
        # wider for the fp32 rounding of longer rows in the recomputation (~1e-7 of it)
        self._floor_margin = 0.0 if exact_dtype == torch.float32 else 1.01 * rounding_error(weight, exact_dtype)
        self._weights = packed_weights  # the kernel-side views codegen.linear.TvmQuantizedLinear holds
        self._full = full
        tiles = num_tiles(weight.rows)
        norms = torch.zeros(tiles * TILE_ROWS)
        norms[: weight.rows] = row_norms(weight)
        self._row_norms = tvm_view(aligned(norms.view(tiles, TILE_ROWS)))
        self._blocks = weight.blocks.numpy()  # [V, bytes a row]: the exact rows' source
        self._kernel = get_kernel("quant_gemv", {"qtype": weight.qtype, "n": weight.rows, "k": weight.cols,
                                                 "screen": True}).fn

    def upper(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, K] fp32 -> upper bounds of the logits [N, V] and each 16-row tile's largest [N, tiles]."""
        upper = torch.empty(x.shape[0], self.weight.rows)
        tile_max = torch.empty(x.shape[0], num_tiles(self.weight.rows))
        self._kernel(aligned(x), *self._weights, self._row_norms, upper, tile_max)
        return upper, tile_max

    def exact(self, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """x [C, K] . W[ids[c]] for each c -> [C] fp32, over the dequantized rows (rounded to bf16 for a bf16 lm_head)."""
        rows = dequantize_blocks(self.weight.qtype, torch.from_numpy(self._blocks[ids]), self.weight.cols)
        return np.einsum("ck,ck->c", x, rows.to(self._exact_dtype).float().numpy())

    def argmax(self, x: torch.Tensor, excluded: Sequence[Collection[int]]) -> list[int]:
        """Each row's argmax of x W^T [N, K] -> N ids, that row's excluded ids left out."""
        upper, tile_max = self.upper(x)
        x, upper, tile_max = x.float().numpy(), upper.numpy(), tile_max.numpy()
        tokens = self._select(x, upper, tile_max, excluded)
        # the unmasked argmax is the answer wherever it is not excluded; the rows where it is (EOS under
        # ignore_eos, now and then) go again with their ids masked
        redo = [row for row, ids in enumerate(excluded) if ids and tokens[row] in ids]
        if redo:
            ids = [excluded[row] for row in redo]
            again = self._select(x[redo], *self._masked(upper[redo], tile_max[redo], ids), ids)
            for row, token in zip(redo, again):
                tokens[row] = token
        return tokens

    @staticmethod
    def _masked(upper: np.ndarray, tile_max: np.ndarray, excluded: Sequence[Collection[int]]):
        """upper and tile_max (copies, changed in place) with each row's excluded ids at -inf."""
        for row, ids in enumerate(excluded):
            upper[row, sorted(ids)] = -np.inf
            for tile in {i // TILE_ROWS for i in ids}:
                tile_max[row, tile] = upper[row, tile * TILE_ROWS : (tile + 1) * TILE_ROWS].max()
        return upper, tile_max

    def _select(self, x: np.ndarray, upper: np.ndarray, tile_max: np.ndarray,
                excluded: Sequence[Collection[int]]) -> list[int]:
        """The exact argmax of each row from its bounds (excluded: only for rows that fall back to full logits)."""
        n, vocab = x.shape[0], self.weight.rows
        rows = np.arange(n)
        best_tile = tile_max.argmax(axis=-1)  # [N]
        in_tile = self._tile_rows(upper, rows, best_tile).argmax(axis=-1)
        floor = self.exact(x, best_tile * TILE_ROWS + in_tile)  # [N] the best logit is at least this
        if self._floor_margin:  # a row's exact logit may exceed its bound by up to this
            floor = floor - (self._floor_margin * np.linalg.norm(x.astype(np.float64), axis=1)).astype(np.float32)
        # tiles whose largest bound reaches the floor, then their rows that do
        tile_row, tile = np.nonzero(tile_max >= floor[:, None])  # [CT] each
        which, lane = np.nonzero(self._tile_rows(upper, tile_row, tile) >= floor[tile_row, None])
        row_of, ids = tile_row[which], tile[which] * TILE_ROWS + lane  # [C] each
        counts = np.bincount(row_of, minlength=n)
        # too many kept rows, or none (NaN in x compares false everywhere): that row's full logits decide
        crowded = np.nonzero((counts > MAX_CANDIDATES) | (counts == 0))[0].tolist()
        if crowded:
            kept = counts[row_of] <= MAX_CANDIDATES
            row_of, ids = row_of[kept], ids[kept]
        logits = self.exact(x[row_of], ids)  # [C]
        order = np.lexsort((ids, -logits, row_of))  # by row, then the larger logit, then the lower id
        first = order[np.r_[True, row_of[order][1:] != row_of[order][:-1]]] if order.size else order
        tokens = np.full(n, vocab)
        tokens[row_of[first]] = ids[first]
        if crowded:
            full = self._full(torch.from_numpy(x[crowded]))
            tokens[crowded] = argmax_rows(full, [excluded[r] for r in crowded])
        return tokens.tolist()

    def _tile_rows(self, upper: np.ndarray, rows: np.ndarray, tiles: np.ndarray) -> np.ndarray:
        """upper's 16 rows of tiles[i] for token rows[i] -> [len(rows), 16] (rows past the vocabulary: -inf)."""
        lanes = tiles[:, None] * TILE_ROWS + np.arange(TILE_ROWS)  # [C, 16]
        values = upper[rows[:, None], np.minimum(lanes, self.weight.rows - 1)]
        values[lanes >= self.weight.rows] = -np.inf
        return values
