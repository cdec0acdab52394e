"""Greedy decoding's argmax over the vocabulary without the exact product of every vocabulary row.

Greedy sampling needs each row's best token, not its 49,152 logits; the lm_head is ~20% of a
SmolLM2 token's FLOPs. The screen (codegen.kernels.quant_gemv with screen=True) multiplies the
quantized lm_head by activations rounded to one int8 piece per 32-block (llama.cpp's; ~2x the
fp32-accurate GEMV's speed) and adds a bound per row: upper[t, v] >= logit[t, v] for every v,
since |x - s a| <= s / 2 elementwise gives |logit - approx| <= sum_b s_b / 2 * sum_j |W[v, 32 b + j]|
(widened by SCREEN_SLACK for fp32 rounding). Then per row:

    best  = argmax_v upper[v]            (excluded tokens set to -inf first; through the kernel's
                                          per-tile maxima, so no pass over [N, V] in torch)
    floor = logit[best], computed exactly (the row's best logit is at least this)
    keep  = {v : upper[v] >= floor}      (no other v can beat `floor`)
    token = argmax of the exact logits over `keep` (ties: the lowest id, as torch.argmax)

which is the argmax of the exact logits, not an approximation of it. On SmolLM2's W1 decode
`keep` holds ~5 rows on average (tens at most); a row that keeps more than MAX_CANDIDATES (a
flat distribution, e.g. an all-zero hidden state) gets its full logits from the linear instead.
Exact logits of kept rows come from catalog.quant's dequantized rows in fp32 (the linear's own
kernels round differently, by ~1e-7 relative: a tie that close may resolve to either token).
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from catalog.quant import BLOCK_SIZE, QuantizedTensor
from codegen.build import get_kernel
from codegen.ops import aligned, tvm_view
from codegen.kernels.quant_common import num_tiles
from codegen.packed import TILE_ROWS
from operators.tensor_ops import argmax_rows

MAX_CANDIDATES = 1024  # kept rows of one token past which its full logits are cheaper to compute
_ROWS_PER_CHUNK = 4096  # rows dequantized at a time while the bound is built (bounds its transient memory)


def block_l1(weight: QuantizedTensor) -> torch.Tensor:
    """sum_j |W[v, 32 b + j]| [V, K / 32] fp32, from the dequantized rows."""
    chunks = []
    for start in range(0, weight.rows, _ROWS_PER_CHUNK):
        rows = weight.select_rows(torch.arange(start, min(start + _ROWS_PER_CHUNK, weight.rows))).dequantize()
        chunks.append(rows.view(rows.shape[0], -1, BLOCK_SIZE).abs().sum(-1))
    return torch.cat(chunks)


class GreedyScreen:
    """The screen of one quantized, bias-free lm_head; `full(x)` computes whole rows of logits (the fallback)."""

    def __init__(self, weight: QuantizedTensor, packed_weights: tuple, full):
        self.weight = weight
        self._weights = packed_weights  # the kernel-side views codegen.linear.TvmQuantizedLinear holds
        self._full = full
        tiles, blocks = num_tiles(weight.rows), weight.cols // BLOCK_SIZE
        l1 = torch.zeros(tiles * TILE_ROWS, blocks)
        l1[: weight.rows] = block_l1(weight)
        self._bound = tvm_view(aligned(l1.view(tiles, TILE_ROWS, blocks).transpose(1, 2).contiguous()))
        self._kernel = get_kernel("quant_gemv", {"qtype": weight.qtype, "n": weight.rows, "k": weight.cols,
                                                 "screen": True}).fn

    def upper(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, K] fp32 -> upper bounds of the logits [N, V] and each 16-row tile's largest [N, tiles]."""
        upper = torch.empty(x.shape[0], self.weight.rows)
        tile_max = torch.empty(x.shape[0], num_tiles(self.weight.rows))
        self._kernel(aligned(x), *self._weights, self._bound, upper, tile_max)
        return upper, tile_max

    def exact(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [C, K] . W[ids[c]] for each c -> [C], in fp32 over the dequantized rows."""
        return (x * self.weight.select_rows(ids).dequantize()).sum(-1)

    def argmax(self, x: torch.Tensor, excluded: Sequence[Collection[int]]) -> list[int]:
        """Each row's argmax of x W^T [N, K] -> N ids, that row's excluded ids left out."""
        upper, tile_max = self.upper(x)
        # the rest is ~20 small torch ops: on one thread, as torch's pool would wake its workers for each of them
        # while TVM's spin (their 4 ms time slices, measured)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
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
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def _masked(upper: torch.Tensor, tile_max: torch.Tensor, excluded: Sequence[Collection[int]]):
        """upper and tile_max (copies, changed in place) with each row's excluded ids at -inf."""
        for row, ids in enumerate(excluded):
            upper[row, sorted(ids)] = float("-inf")
            for tile in {i // TILE_ROWS for i in ids}:
                tile_max[row, tile] = upper[row, tile * TILE_ROWS : (tile + 1) * TILE_ROWS].max()
        return upper, tile_max

    def _select(self, x: torch.Tensor, upper: torch.Tensor, tile_max: torch.Tensor,
                excluded: Sequence[Collection[int]]) -> list[int]:
        """The exact argmax of each row from its bounds (excluded: only for rows that fall back to full logits)."""
        n, vocab = x.shape[0], self.weight.rows
        rows = torch.arange(n)
        best_tile = tile_max.argmax(dim=-1)  # [N]
        in_tile = self._tile_rows(upper, rows, best_tile).argmax(dim=-1)
        floor = self.exact(x, best_tile * TILE_ROWS + in_tile)  # [N] the best logit is at least this
        # tiles whose largest bound reaches the floor, then their rows that do
        tile_row, tile = (tile_max >= floor[:, None]).nonzero(as_tuple=True)  # [CT] each
        which, lane = (self._tile_rows(upper, tile_row, tile) >= floor[tile_row, None]).nonzero(as_tuple=True)
        row_of, ids = tile_row[which], tile[which] * TILE_ROWS + lane  # [C] each
        counts = torch.bincount(row_of, minlength=n)
        # too many kept rows, or none (NaN in x compares false everywhere): that row's full logits decide
        crowded = ((counts > MAX_CANDIDATES) | (counts == 0)).nonzero(as_tuple=True)[0].tolist()
        if crowded:
            kept = counts[row_of] <= MAX_CANDIDATES
            row_of, ids = row_of[kept], ids[kept]
        logits = self.exact(x[row_of], ids)  # [C]
        best = torch.full((n,), float("-inf")).scatter_reduce(0, row_of, logits, "amax")
        at_best = logits == best[row_of]  # the lowest id among a row's equal best
        tokens = torch.full((n,), vocab).scatter_reduce(0, row_of[at_best], ids[at_best], "amin")
        if crowded:
            tokens[crowded] = torch.tensor(argmax_rows(self._full(x[crowded]), [excluded[r] for r in crowded]))
        return tokens.tolist()

    def _tile_rows(self, upper: torch.Tensor, rows: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """upper's 16 rows of tiles[i] for token rows[i] -> [len(rows), 16] (rows past the vocabulary: -inf)."""
        lanes = tiles[:, None] * TILE_ROWS + torch.arange(TILE_ROWS)  # [C, 16]
        values = upper[rows[:, None], lanes.clamp(max=self.weight.rows - 1)]
        return values.masked_fill(lanes >= self.weight.rows, float("-inf"))
