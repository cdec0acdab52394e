"""Fused dequantize + matrix multiply over packed GGUF blocks (Q4_1, Q4_0, Q8_0), for batches
of tokens (batched decode, prefill chunks).

out[t, n] = sum_k x[t, k] * W[n, k], W in codegen.packed's layout. Each thread takes panels
of `panel_tiles` row tiles (64 rows with AVX-512); per panel and chunk of KC columns of K it
dequantizes the chunk once into an fp32 buffer [KC, 64] that stays in L1 (24-32 KB), then
runs every token of the batch over it with a register tile of `token_tile` tokens x 64 rows
(24 vector accumulators, 4 loads and 6 broadcasts per 24 FMAs). The tile is the target's
(gemm_tile): AVX2's 16 narrower registers take 6 tokens x 16 rows, NEON's 32 3 tokens x 32, and the
nibble-to-float table lookup (vpermps) becomes a shift, mask and convert. Partial sums go back to `out` between
K chunks, so the weights are read and unpacked once per block of token_block(K) tokens (222
at K=576) instead of dequantizing the whole matrix to a scratch buffer in memory. Panels
always run on the thread pool: above the GEMV crossover (codegen.quant_crossover) every
SmolLM2 matrix is past quant_common.PARALLEL_MIN_WORK, and one loop nest halves the compile
time.

Every (token, row) is one fp32 FMA chain over k = 0..K-1 in order, whichever token tile it
falls in, so a token's result does not depend on the batch. Dequantization uses a fused
d * q + m (one rounding), hence it matches catalog.quant to fp32 tolerance, not bitwise.
The GPU twin is the plain dequantize-multiply loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from codegen import packed
from codegen.build import KernelSpec
from codegen.kernels import common, quant_common
from codegen.kernels.common import loop_kinds, symbolic
from codegen.kernels.quant_common import QUANT_OFFSET, check, gpu_row_dot, group_quants, num_tiles, quant_kernel
from codegen.packed import GROUP_BYTES, QUANT_BYTES, TILE_ROWS
from codegen.target import Target

LANES = TILE_ROWS
X_BLOCK_BYTES = 512 * 1024


@dataclass(frozen=True)
class GemmTile:
    """The register tile: token_tile tokens x 16 * panel_tiles rows of fp32 accumulators."""
    panel_tiles: int
    token_tile: int
    table_lookup: bool  # AVX-512's vpermps turns a nibble into its float in one instruction


def gemm_tile(target: Target) -> GemmTile:
    """6 x 64 (24 of AVX-512's 32 registers); AVX2: 6 x 16 (12 of its 16 ymm, with the two weight vectors and a
    broadcast beside them: 3 x 32 left no register for the broadcast, and ran at 94-103 GFLOP/s against 177-193 at
    64 x 576 -> 960..3072 on Zen 4 at the AVX2 level); NEON: 3 x 32 (24 of its 32 q)."""
    if target.arch == "x86_64":
        return GemmTile(4, 6, True) if target.has("avx512f") else GemmTile(1, 6, False)
    return GemmTile(2, 3, False)


def token_block(k: int, token_tile: int) -> int:
    """Tokens per pass over the weights: their rows of x (<= ~512 KB) stay in L2 while every
    panel streams through them; each extra pass unpacks the weights once more."""
    return max(token_tile, X_BLOCK_BYTES // (4 * k) // token_tile * token_tile)


def k_chunk(k: int) -> int:
    """Columns per dequantized chunk: the largest that divides K and keeps [KC, 64] fp32 <= 32 KB."""
    return next(c for c in (128, 96, 64, 32) if k % c == 0)


def _weights(qtype: str, qs, scales, mins, tile, b, i, c, h, table_lookup: bool):
    """fp32x16: element 16h + 4i + c of block b for the 16 rows of `tile` (fused d * q + m)."""
    from tvm.script import tirx as T

    lanes = T.reinterpret("int32x16", qs[tile, b, i, T.ramp(0, 1, GROUP_BYTES * LANES)])
    d = T.Cast("float32x16", scales[tile, b, T.ramp(0, 1, LANES)])
    if not table_lookup:
        q = T.Cast("float32x16", group_quants(qtype, lanes, c, h) - T.Broadcast(QUANT_OFFSET[qtype], LANES))
        if qtype == "Q4_1":
            return T.fma(d, q, T.Cast("float32x16", mins[tile, b, T.ramp(0, 1, LANES)]))
        return d * q
    if qtype == "Q8_0":
        return d * T.Cast("float32x16", group_quants(qtype, lanes, c, h) - T.Broadcast(QUANT_OFFSET[qtype], LANES))
    # 4-bit: a 16-entry table lookup (vpermps reads only the index's low 4 bits) does the nibble
    # mask and the int->float conversion in one instruction, with Q4_0's offset folded in
    table = T.Cast("float32x16", T.ramp(-QUANT_OFFSET[qtype], 1, LANES))
    shifted = lanes >> T.Broadcast(8 * c + 4 * h, LANES)
    q = T.call_llvm_pure_intrin("float32x16", "llvm.x86.avx512.permvar.sf.512", table, shifted)
    if qtype == "Q4_1":
        return T.fma(d, q, T.Cast("float32x16", mins[tile, b, T.ramp(0, 1, LANES)]))
    return d * q


def make_quant_gemm(qtype: str, n: int, k: int, *, target: Target):
    check(qtype, k)
    return _make_gpu(qtype, n, k) if target.is_gpu else _make_cpu(qtype, n, k, gemm_tile(target))


def _make_cpu(qtype: str, n: int, k: int, tile: GemmTile):
    from tvm.script import tirx as T

    PANEL_TILES, TOKEN_TILE, LOOKUP = tile.panel_tiles, tile.token_tile, tile.table_lookup
    TILES, GROUPS = num_tiles(n), QUANT_BYTES[qtype] // GROUP_BYTES
    num_tokens = symbolic("num_tokens")
    KC = k_chunk(k)
    TB = token_block(k, TOKEN_TILE)
    FULL_PANELS, LAST = divmod(TILES, PANEL_TILES)  # LAST: tiles of a final partial panel
    NUM_PANELS = FULL_PANELS + (LAST > 0)
    ROWS = PANEL_TILES * LANES
    NIBBLES = 2 if qtype != "Q8_0" else 1

    @T.macro
    def dequantize_chunk(qs, scales, mins, wt, tile0, tiles, kc):
        """wt[e, 16r + l] = W[16 (tile0 + r) + l, kc * KC + e] for r < tiles."""
        # (no let-bound values: TVM 0.27 gives each one a heap workspace per call)
        for r in range(tiles):
            for bb in range(KC // 32):
                for i in T.unroll(GROUPS):
                    for c in T.unroll(GROUP_BYTES):
                        for h in T.unroll(NIBBLES):
                            wt[bb * 32 + 16 * h + GROUP_BYTES * i + c, T.ramp(r * LANES, 1, LANES)] = _weights(
                                qtype, qs, scales, mins, tile0 + r, kc * (KC // 32) + bb, i, c, h, LOOKUP)

    @T.macro
    def token_tile(x, wt, out, tile0, tiles, kc, t0, TT):
        acc = T.alloc_buffer((TT, tiles, LANES), "float32")
        if kc == 0:
            for t in T.unroll(TT):
                for r in T.unroll(tiles):
                    for l in T.vectorized(LANES):
                        acc[t, r, l] = T.float32(0)
        else:
            for t in T.unroll(TT):
                for r in T.unroll(tiles):
                    for l in T.vectorized(LANES):
                        acc[t, r, l] = out[t0 + t, tile0 * LANES + r * LANES + l]
        for e in range(KC):
            for r in T.unroll(tiles):
                for t in T.unroll(TT):
                    for l in T.vectorized(LANES):
                        acc[t, r, l] = T.fma(wt[e, r * LANES + l], x[t0 + t, kc * KC + e], acc[t, r, l])
        for t in T.unroll(TT):
            for r in T.unroll(tiles):
                if n % LANES == 0:
                    for l in T.vectorized(LANES):
                        out[t0 + t, tile0 * LANES + r * LANES + l] = acc[t, r, l]
                else:
                    # the padding rows of the last tile have no column in `out`; the partial sums of
                    # real rows go through `out` between K chunks, so every real row is written
                    for l in range(LANES):
                        if (tile0 + r) * LANES + l < n:
                            out[t0 + t, tile0 * LANES + r * LANES + l] = acc[t, r, l]

    @T.macro
    def panel(x, qs, scales, mins, out, tile0, tiles, first, count):
        """Rows of `tiles` tiles from tile0, for tokens first .. first + count - 1."""
        wt = T.alloc_buffer((KC, ROWS), "float32")
        for kc in range(k // KC):
            dequantize_chunk(qs, scales, mins, wt, tile0, tiles, kc)
            for i in range(count // TOKEN_TILE):
                token_tile(x, wt, out, tile0, tiles, kc, first + i * TOKEN_TILE, TOKEN_TILE)
            for i in range(count % TOKEN_TILE):  # the last few tokens one by one
                token_tile(x, wt, out, tile0, tiles, kc, first + count // TOKEN_TILE * TOKEN_TILE + i, 1)

    @T.macro
    def any_panel(x, qs, scales, mins, out, p, first, count):
        if LAST == 0:
            panel(x, qs, scales, mins, out, p * PANEL_TILES, PANEL_TILES, first, count)
        else:
            if p < FULL_PANELS:
                panel(x, qs, scales, mins, out, p * PANEL_TILES, PANEL_TILES, first, count)
            else:
                panel(x, qs, scales, mins, out, FULL_PANELS * PANEL_TILES, LAST, first, count)

    @T.macro
    def body(x, qs, scales, mins, out):
        for tb in range((num_tokens + TB - 1) // TB):
            for p in T.parallel(NUM_PANELS):
                any_panel(x, qs, scales, mins, out, p, tb * TB, T.min(num_tokens - tb * TB, TB))

    return quant_kernel("quant_gemm", qtype, n, k, body, (num_tokens, n), x_shape=(num_tokens, k))


def _make_gpu(qtype: str, n: int, k: int):
    """One block per (row tile, token), one thread per row, fp32 dequantize-multiply."""
    from tvm.script import tirx as T

    TILES = num_tiles(n)
    row_dot = gpu_row_dot(qtype, n, k)
    num_tokens = symbolic("num_tokens")
    OUTER, _ = loop_kinds(gpu=True)

    @T.macro
    def body(x, qs, scales, mins, out):
        for tile in OUTER(TILES):
            for t in T.thread_binding(num_tokens, thread="blockIdx.y"):
                for l in T.thread_binding(LANES, thread="threadIdx.x"):
                    row_dot(x, qs, scales, mins, out, tile, t, l)

    return quant_kernel("quant_gemm", qtype, n, k, body, (num_tokens, n), x_shape=(num_tokens, k))


def quant_gemm_config(target, qtype: str, n: int, k: int) -> dict:
    return {}


def schedule_quant_gemm(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("quant_gemm", make_quant_gemm, quant_gemm_config, schedule_quant_gemm,
                  args=("x", "qs", "scales", "mins (Q4_1 only)", "out"), source_file=__file__, scheduled=True,
                  depends=(common.__file__, quant_common.__file__, packed.__file__))
