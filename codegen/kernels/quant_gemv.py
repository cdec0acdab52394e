"""Fused dequantize + matrix-vector product over packed GGUF blocks (Q4_1, Q4_0, Q8_0), for decode.

out[t, n] = sum_k x[t, k] * W[n, k], W in codegen.packed's layout (16-row tiles, 4 quant
bytes of each row per 32-bit lane).

CPU: integer dot products on the quants as stored, instead of unpacking every weight to fp32,
through the target's own instruction (codegen.kernels.int_dot: AVX512-VNNI vpdpbusd, 64
unsigned x signed byte products per instruction; AVX512-BW / AVX2 pmaddubsw + pmaddwd; Arm
sdot; a portable expression elsewhere). Each
token's x is split, per 32-element block, into three int8 pieces

    x ~= s * (a1 + a2 / 254 + a3 / 254^2),   s = max|x_block| / 127,

which leaves an error of ~1e-7 of the block's largest |x| (fp32 rounding is 6e-8), so the
result stays within fp32 tolerances of the dequantized reference (llama.cpp's single int8
piece is ~4e-3 off). Per 16-row tile, block b and piece p, D_p = sum_j q_j * a_pj is exact
in int32, and

    acc += d * s * ((D_1 - o S_1) + (D_2 - o S_2) / 254 + (D_3 - o S_3) / 254^2)  [+ m * sum(x_block)]

with o the quant offset (Q4_0 8, Q8_0 128: packed as offset binary) and S_p = sum_j a_pj.
Per 512 weights and token that is 24 dot products, 8 unpack and ~13 scaling instructions with
VNNI, against 128 for unpacking to fp32 and FMAs (2.4-2.9x faster than that at one token, one
thread). Without VNNI each 4-byte dot product is a pmaddubsw into int16, whose results a block adds
up before one pmaddwd widens them to int32 (block_pair_sums; exact: codegen.kernels.int_dot), on
half-width vectors with AVX2 (which also keeps one tile per step: 16 registers), and Q8_0's 8-bit
quants go through as two nibbles (pmaddubsw saturates at int16).

Tokens run two at a time over a tile whose blocks stay in L1 (each weight vector loaded and
unpacked once for both, where the registers hold both tokens' sums: AVX-512; the first token of
an odd count alone), each token through exactly this sequence, so a token's output does not
depend on what it is batched with. Row tiles are
spread over threads only for calls with enough work (PARALLEL_MIN_WORK). The GPU twin is
the plain dequantize-multiply loop.
"""
from __future__ import annotations

from codegen import packed
from codegen.build import KernelSpec
from codegen.kernels import common, int_dot, quant_common
from codegen.kernels.common import loop_kinds, prefetch, symbolic
from codegen.kernels.int_dot import IntDot, int_dot_for
from codegen.kernels.quant_common import PARALLEL_MIN_WORK, QUANT_OFFSET, check, gpu_row_dot, num_tiles, quant_kernel
from codegen.packed import GROUP_BYTES, QUANT_BYTES, TILE_ROWS
from codegen.target import Target

LANES = TILE_ROWS
PIECES = 3  # what keeps fp32 accuracy (the screen takes 1: llama.cpp's int8 activations)
# the screen's bound: ||x - x_int8|| widened by SCREEN_SLACK (its own fp32 sum of squares is off by < 1e-4), plus
# screen_rounding(K) ||x||, the fp32 rounding of a dot product's two computations (kernel and recomputation)
SCREEN_SLACK = 1.05


def screen_rounding(k: int) -> float:
    """Each fp32 dot product of length k is within k 2^-24 sum|x w| <= k 2^-24 ||x|| ||w|| of the exact one."""
    return 2 * k * 2.0**-24
PIECE_RADIX = 254  # |residual| <= 0.5 after rounding, so 254 * residual fits int8's +-127
# per token and 32-block, in one workspace (each TVM workspace costs ~0.1 us per call):
SCALE, SUM, CORRECTION = 0, 1, 2  # s; sum(x) (Q4_1); offset * sum(a_p) for each piece (Q4_0, Q8_0)
# the screen's per token, after its blocks (as block NB): sum (x - s a)^2, sum x^2, then e[t]
RESIDUAL_SQ, SQ, ERROR = 0, 1, 2


def _dot(dot: IntDot, acc, quants, xq, t, p, e):
    """acc + per lane the 4-byte dot product of `quants` with x pieces p[e : e + 4]."""
    from tvm.script import tirx as T

    return dot.dot(acc, quants, T.reinterpret("int32", xq.vload([t, p, e], "int8x4")))


def _pairs(dot: IntDot, quants, xq, t, p, e):
    """The int16 pair sums of `quants` with x pieces p[e : e + 4] (IntDot.byte_pairs)."""
    from tvm.script import tirx as T

    return dot.byte_pairs(quants, T.reinterpret("int32", xq.vload([t, p, e], "int8x4")))


def _nibbles(quants, high: int, num_bytes: int):
    """The low (high=0) or high nibble of every byte of a uint8 x num_bytes vector."""
    from tvm.script import tirx as T

    if high:
        return quants >> T.Broadcast(T.uint8(4), num_bytes)
    return quants & T.Broadcast(T.uint8(15), num_bytes)


def _exact(dot, correction, has_offset: bool):
    """An int32 dot product minus its offset correction, in fp32 (both are integers below 2^24: exact)."""
    from tvm.script import tirx as T

    return T.Cast("float32", dot) - correction if has_offset else T.Cast("float32", dot)


def make_quant_gemv(qtype: str, n: int, k: int, *, target: Target, screen: bool = False):
    """screen: the greedy screen's kernel (runtime's greedy sampling over the lm_head): one int8 piece per
    activation (x rounded to 1/254 of its block's largest |x|, llama.cpp's activations) and, per row, an upper
    bound instead of the product: out[t, n] = sum_b d s (D - o S) [+ m sum(x)] + row_norm[n] * e[t] with
    row_norm[n] = ||d (q - o)|| over row n (codegen.greedy_screen.row_norms: the row less Q4_1's mins, which meet
    the exact sum of x) and e[t] = SCREEN_SLACK ||x - x_int8||_2 + screen_rounding(K) ||x||_2, which is >= the exact
    product by Cauchy-Schwarz (the second term covers fp32 rounding here and in the exact recomputation). Takes row_norm [tiles, 16] fp32 after mins, and
    writes each 16-row tile's largest bound, tile_max [T, tiles], after out. CPU only: the engine's model runs on
    the CPU."""
    check(qtype, k)
    if target.is_gpu:
        if screen:
            raise ValueError("the greedy screen is a CPU kernel (the engine's model runs on the CPU)")
        return _make_gpu(qtype, n, k)
    return _make_cpu(qtype, n, k, int_dot_for(target), screen)


def tiles_per_step(dot: IntDot, tiles: int, pieces: int) -> int:
    """Two tiles per step (independent dot-product chains) where their accumulators fit the registers."""
    registers_per_tile = (pieces + 1) * LANES // dot.lanes  # int32 piece sums + the fp32 sum
    return 2 if tiles % 2 == 0 and 2 * registers_per_tile <= dot.registers // 2 else 1


def tokens_per_step(dot: IntDot, tiles: int, pieces: int) -> int:
    """Two tokens per weight load where both tokens' accumulators fit the registers beside the weights."""
    registers_per_token = tiles * (pieces + 1) * LANES // dot.lanes
    return 2 if 2 * registers_per_token <= dot.registers - 8 else 1


def _make_cpu(qtype: str, n: int, k: int, dot: IntDot, screen: bool):
    from tvm.script import tirx as T

    NB, TILES, GROUPS = k // 32, num_tiles(n), QUANT_BYTES[qtype] // GROUP_BYTES
    P = 1 if screen else PIECES
    BLOCK_FIELDS = max(CORRECTION + P, ERROR + 1)
    num_tokens = symbolic("num_tokens")
    G = tiles_per_step(dot, TILES, P)
    TOKENS = tokens_per_step(dot, G, P)
    W, UNITS = dot.lanes, LANES // dot.lanes  # each tile's 16 rows as UNITS dot products of W lanes

    def unit_quants(qs, tile, b, i, u):
        """The 4 W bytes of quants that unit u of a tile multiplies at group i of block b."""
        return qs[tile, b, i, T.ramp(u * 4 * W, 1, 4 * W)]

    def unit_nibbles(qs, tile, b, i, u, high: int):
        return _nibbles(unit_quants(qs, tile, b, i, u), high, 4 * W)

    SPLIT_BYTES = qtype == "Q8_0" and dot.nibbles_only  # 8-bit quants as 16 * high + low nibble
    PAIRS, HALVES = dot.pair_sums, 2 if SPLIT_BYTES else 1  # int16 sums per block (IntDot.byte_pairs)
    FOUR_BIT, HAS_MIN, OFFSET = qtype != "Q8_0", qtype == "Q4_1", QUANT_OFFSET[qtype]
    HAS_OFFSET = OFFSET != 0
    R1, R2 = 1 / PIECE_RADIX, 1 / PIECE_RADIX**2

    @T.macro
    def pairwise_sum(buf, row):
        """buf[row, 0] + buf[row, 1] ends up holding sum(buf[row, 0:32]), in a fixed order."""
        for l in T.vectorized(16):
            buf[row, l] = buf[row, l] + buf[row, l + 16]
        for l in T.vectorized(8):
            buf[row, l] = buf[row, l] + buf[row, l + 8]
        for l in T.vectorized(4):
            buf[row, l] = buf[row, l] + buf[row, l + 4]
        for l in T.vectorized(2):
            buf[row, l] = buf[row, l] + buf[row, l + 2]

    @T.macro
    def max_of_16(buf):
        """buf[0] ends up holding max(buf[0:16]), folded pairwise (log2 16 vector steps)."""
        for l in T.vectorized(8):
            buf[l] = T.max(buf[l], buf[l + 8])
        for l in T.vectorized(4):
            buf[l] = T.max(buf[l], buf[l + 4])
        for l in T.vectorized(2):
            buf[l] = T.max(buf[l], buf[l + 2])
        buf[0] = T.max(buf[0], buf[1])

    @T.macro
    def split_activations(x, xq, xblock, num_tokens):
        for t in range(num_tokens):
            if screen:
                xblock[t, NB, RESIDUAL_SQ] = T.float32(0)
                xblock[t, NB, SQ] = T.float32(0)
            for b in range(NB):
                amax = T.alloc_buffer((16,), "float32")
                for l in T.vectorized(16):
                    amax[l] = T.max(T.fabs(x[t, b * 32 + l]), T.fabs(x[t, b * 32 + 16 + l]))
                max_of_16(amax)
                xblock[t, b, SCALE] = amax[0] * T.float32(1.0 / 127)
                # blocks with max|x| below 1e-30 count as zero (127 / amax would overflow fp32)
                amax[1] = T.if_then_else(amax[0] > T.float32(1e-30), T.float32(127) / amax[0], T.float32(0))
                # no let-bindings inside vectorized loops: TVM 0.27 evaluates them for lane 0 only
                y = T.alloc_buffer((P, 32), "float32")
                if P == 1:
                    for l in T.vectorized(32):
                        y[0, l] = x[t, b * 32 + l] * amax[1]
                        xq[t, 0, b * 32 + l] = T.Cast("int8", T.nearbyint(y[0, l]))
                    if screen:  # the block's share of ||x - s a||^2 and ||x||^2
                        sq = T.alloc_buffer((2, 32), "float32")
                        for l in T.vectorized(32):
                            sq[0, l] = x[t, b * 32 + l] - T.Cast("float32", xq[t, 0, b * 32 + l]) * xblock[t, b, SCALE]
                            sq[0, l] = sq[0, l] * sq[0, l]
                            sq[1, l] = x[t, b * 32 + l] * x[t, b * 32 + l]
                        pairwise_sum(sq, 0)
                        pairwise_sum(sq, 1)
                        xblock[t, NB, RESIDUAL_SQ] = xblock[t, NB, RESIDUAL_SQ] + (sq[0, 0] + sq[0, 1])
                        xblock[t, NB, SQ] = xblock[t, NB, SQ] + (sq[1, 0] + sq[1, 1])
                else:
                    for l in T.vectorized(32):
                        y[0, l] = x[t, b * 32 + l] * amax[1]
                        y[1, l] = (y[0, l] - T.nearbyint(y[0, l])) * T.float32(PIECE_RADIX)
                        y[2, l] = (y[1, l] - T.nearbyint(y[1, l])) * T.float32(PIECE_RADIX)
                        xq[t, 0, b * 32 + l] = T.Cast("int8", T.nearbyint(y[0, l]))
                        xq[t, 1, b * 32 + l] = T.Cast("int8", T.nearbyint(y[1, l]))
                        xq[t, 2, b * 32 + l] = T.Cast("int8", T.min(T.max(T.nearbyint(y[2, l]), T.float32(-127)),
                                                                    T.float32(127)))
                if HAS_MIN:
                    for l in T.vectorized(32):
                        y[0, l] = x[t, b * 32 + l]
                    pairwise_sum(y, 0)
                    xblock[t, b, SUM] = y[0, 0] + y[0, 1]
                if HAS_OFFSET:
                    isum = T.alloc_buffer((P, 32), "int32")
                    for p in T.unroll(P):
                        for l in T.vectorized(32):
                            isum[p, l] = T.Cast("int32", xq[t, p, b * 32 + l])
                        pairwise_sum(isum, p)
                        xblock[t, b, CORRECTION + p] = T.Cast("float32", (isum[p, 0] + isum[p, 1]) * OFFSET)
            if screen:
                xblock[t, NB, ERROR] = (T.float32(SCREEN_SLACK) * T.sqrt(xblock[t, NB, RESIDUAL_SQ])
                                        + T.float32(screen_rounding(k)) * T.sqrt(xblock[t, NB, SQ]))

    @T.macro
    def block_dots(qs, xq, acc, g, b, t0, TB):
        """acc[tb, gi, p] = block b's int32 dot products of tile group g's quants with token t0 + tb's piece p."""
        for tb in T.unroll(TB):
            for gi in T.unroll(G):
                for p in T.unroll(P):
                    acc[tb, gi, p, T.ramp(0, 1, LANES)] = T.Broadcast(T.int32(0), LANES)
        for i in T.unroll(GROUPS):
            for gi in T.unroll(G):
                for u in T.unroll(UNITS):
                    # (no let-bound vectors: TVM 0.27 gives each one a heap workspace per call)
                    for tb in T.unroll(TB):
                        for p in T.unroll(P):
                            if FOUR_BIT:
                                acc[tb, gi, p, T.ramp(u * W, 1, W)] = _dot(
                                    dot, _dot(dot, acc[tb, gi, p, T.ramp(u * W, 1, W)],
                                              unit_nibbles(qs, g * G + gi, b, i, u, 0),
                                              xq, t0 + tb, p, b * 32 + 4 * i),
                                    unit_nibbles(qs, g * G + gi, b, i, u, 1), xq,
                                    t0 + tb, p, b * 32 + 16 + 4 * i)
                            elif SPLIT_BYTES:
                                acc[tb, gi, p, T.ramp(u * W, 1, W)] = _dot(
                                    dot, acc[tb, gi, p, T.ramp(u * W, 1, W)],
                                    unit_nibbles(qs, g * G + gi, b, i, u, 0),
                                    xq, t0 + tb, p, b * 32 + 4 * i) + (_dot(
                                        dot, T.Broadcast(T.int32(0), W),
                                        unit_nibbles(qs, g * G + gi, b, i, u, 1),
                                        xq, t0 + tb, p, b * 32 + 4 * i) << T.Broadcast(T.int32(4), W))
                            else:
                                acc[tb, gi, p, T.ramp(u * W, 1, W)] = _dot(
                                    dot, acc[tb, gi, p, T.ramp(u * W, 1, W)],
                                    unit_quants(qs, g * G + gi, b, i, u), xq, t0 + tb, p,
                                    b * 32 + 4 * i)

    @T.macro
    def block_pair_sums(qs, xq, acc, g, b, t0, TB):
        """block_dots' sums through int16 (IntDot.byte_pairs): every pmaddubsw of the block added up first, then
        widened once (Q8_0's high nibbles apart, widened times 16)."""
        acc16 = T.alloc_buffer((TB, G, P, HALVES, 2 * LANES), "int16")
        for tb in T.unroll(TB):
            for gi in T.unroll(G):
                for p in T.unroll(P):
                    for h in T.unroll(HALVES):
                        acc16[tb, gi, p, h, T.ramp(0, 1, 2 * LANES)] = T.Broadcast(T.int16(0), 2 * LANES)
        for i in T.unroll(GROUPS):
            for gi in T.unroll(G):
                for u in T.unroll(UNITS):
                    for tb in T.unroll(TB):
                        for p in T.unroll(P):
                            if FOUR_BIT:
                                acc16[tb, gi, p, 0, T.ramp(u * 2 * W, 1, 2 * W)] = (
                                    acc16[tb, gi, p, 0, T.ramp(u * 2 * W, 1, 2 * W)]
                                    + _pairs(dot, unit_nibbles(qs, g * G + gi, b, i, u, 0),
                                             xq, t0 + tb, p, b * 32 + 4 * i)
                                    + _pairs(dot, unit_nibbles(qs, g * G + gi, b, i, u, 1),
                                             xq, t0 + tb, p, b * 32 + 16 + 4 * i))
                            else:
                                acc16[tb, gi, p, 0, T.ramp(u * 2 * W, 1, 2 * W)] = (
                                    acc16[tb, gi, p, 0, T.ramp(u * 2 * W, 1, 2 * W)]
                                    + _pairs(dot, unit_nibbles(qs, g * G + gi, b, i, u, 0),
                                             xq, t0 + tb, p, b * 32 + 4 * i))
                                acc16[tb, gi, p, 1, T.ramp(u * 2 * W, 1, 2 * W)] = (
                                    acc16[tb, gi, p, 1, T.ramp(u * 2 * W, 1, 2 * W)]
                                    + _pairs(dot, unit_nibbles(qs, g * G + gi, b, i, u, 1),
                                             xq, t0 + tb, p, b * 32 + 4 * i))
        for tb in T.unroll(TB):
            for gi in T.unroll(G):
                for p in T.unroll(P):
                    for u in T.unroll(UNITS):
                        if FOUR_BIT:
                            acc[tb, gi, p, T.ramp(u * W, 1, W)] = dot.widen(acc16[tb, gi, p, 0, T.ramp(u * 2 * W, 1, 2 * W)])
                        else:
                            acc[tb, gi, p, T.ramp(u * W, 1, W)] = (
                                dot.widen(acc16[tb, gi, p, 0, T.ramp(u * 2 * W, 1, 2 * W)])
                                + dot.widen(acc16[tb, gi, p, 1, T.ramp(u * 2 * W, 1, 2 * W)], 16))

    @T.macro
    def tokens_of_group(x, xq, xblock, qs, scales, mins, row_norm, out, tile_max, g, t0, TB):
        """Tokens t0 .. t0 + TB - 1 over tile group g: each weight vector loaded and unpacked once for the TB
        tokens, each token through the same operations in the same order as alone."""
        facc = T.alloc_buffer((TB, G, LANES), "float32")
        for tb in T.unroll(TB):
            for gi in T.unroll(G):
                for l in T.vectorized(LANES):
                    facc[tb, gi, l] = T.float32(0)
        for b in range(NB):
            if t0 == 0 and g + 1 < TILES // G:
                # the next group's blocks, one group (>= 4 KB) ahead: decode streams every layer's
                # weights from L3/DRAM, and the hardware prefetcher stops at each 4 KB page
                for gi in T.unroll(G):
                    for i in T.unroll(GROUPS):
                        T.evaluate(prefetch(qs, (g + 1) * G + gi, b, i, 0))
                    T.evaluate(prefetch(scales, (g + 1) * G + gi, b, 0))
                    if HAS_MIN:
                        T.evaluate(prefetch(mins, (g + 1) * G + gi, b, 0))
            acc = T.alloc_buffer((TB, G, P, LANES), "int32")
            if PAIRS:
                block_pair_sums(qs, xq, acc, g, b, t0, TB)
            else:
                block_dots(qs, xq, acc, g, b, t0, TB)
            for tb in T.unroll(TB):
                if HAS_MIN:
                    for gi in T.unroll(G):
                        for l in T.vectorized(LANES):
                            facc[tb, gi, l] = T.fma(T.Cast("float32", mins[g * G + gi, b, l]), xblock[t0 + tb, b, SUM],
                                                    facc[tb, gi, l])
                for gi in T.unroll(G):
                    for l in T.vectorized(LANES):
                        if P == 1:
                            facc[tb, gi, l] = T.fma(
                                T.Cast("float32", scales[g * G + gi, b, l]) * xblock[t0 + tb, b, SCALE],
                                _exact(acc[tb, gi, 0, l], xblock[t0 + tb, b, CORRECTION], HAS_OFFSET), facc[tb, gi, l])
                        else:
                            facc[tb, gi, l] = T.fma(
                                T.Cast("float32", scales[g * G + gi, b, l]) * xblock[t0 + tb, b, SCALE],
                                _exact(acc[tb, gi, 0, l], xblock[t0 + tb, b, CORRECTION], HAS_OFFSET)
                                + _exact(acc[tb, gi, 1, l], xblock[t0 + tb, b, CORRECTION + 1], HAS_OFFSET) * T.float32(R1)
                                + _exact(acc[tb, gi, 2, l], xblock[t0 + tb, b, CORRECTION + 2], HAS_OFFSET) * T.float32(R2),
                                facc[tb, gi, l])
        for tb in T.unroll(TB):
            for gi in T.unroll(G):
                if screen:
                    for l in T.vectorized(LANES):
                        facc[tb, gi, l] = T.fma(row_norm[g * G + gi, l], xblock[t0 + tb, NB, ERROR], facc[tb, gi, l])
                if n % LANES == 0:
                    for l in T.vectorized(LANES):
                        out[t0 + tb, (g * G + gi) * LANES + l] = facc[tb, gi, l]
                else:
                    for l in range(LANES):
                        if (g * G + gi) * LANES + l < n:
                            out[t0 + tb, (g * G + gi) * LANES + l] = facc[tb, gi, l]
                if screen:  # the tile's largest bound (rows past n: -inf), folded pairwise
                    fold = T.alloc_buffer((LANES,), "float32")
                    for l in T.vectorized(LANES):
                        fold[l] = T.Select((g * G + gi) * LANES + l < n, facc[tb, gi, l], T.float32(-3.0e38))
                    max_of_16(fold)
                    tile_max[t0 + tb, g * G + gi] = fold[0]

    @T.macro
    def tile_group(x, xq, xblock, qs, scales, mins, row_norm, out, tile_max, g, num_tokens):
        if TOKENS == 2:  # an odd count's first token alone (one token, decode's case, is the code of old)
            if num_tokens % 2 == 1:
                tokens_of_group(x, xq, xblock, qs, scales, mins, row_norm, out, tile_max, g, 0, 1)
        for tp in range(num_tokens // TOKENS):
            tokens_of_group(x, xq, xblock, qs, scales, mins, row_norm, out, tile_max, g,
                            num_tokens % TOKENS + tp * TOKENS, TOKENS)

    @T.macro
    def screen_body(x, qs, scales, mins, row_norm, out, tile_max):
        xq = T.alloc_buffer((num_tokens, P, k), "int8")
        xblock = T.alloc_buffer((num_tokens, NB + 1, BLOCK_FIELDS), "float32")
        split_activations(x, xq, xblock, num_tokens)
        if num_tokens * (TILES * LANES * k) >= PARALLEL_MIN_WORK:
            for g in T.parallel(TILES // G):
                tile_group(x, xq, xblock, qs, scales, mins, row_norm, out, tile_max, g, num_tokens)
        else:
            for g in range(TILES // G):
                tile_group(x, xq, xblock, qs, scales, mins, row_norm, out, tile_max, g, num_tokens)

    @T.macro
    def body(x, qs, scales, mins, out):
        screen_body(x, qs, scales, mins, scales, out, out)  # no row_norm, no tile_max: never touched

    return quant_kernel("quant_gemv", qtype, n, k, screen_body if screen else body, (num_tokens, n),
                        x_shape=(num_tokens, k), screen=screen)


def _make_gpu(qtype: str, n: int, k: int):
    """One block per row tile, one thread per row, fp32 dequantize-multiply."""
    from tvm.script import tirx as T

    TILES = num_tiles(n)
    row_dot = gpu_row_dot(qtype, n, k)
    num_tokens = symbolic("num_tokens")
    OUTER, _ = loop_kinds(gpu=True)

    @T.macro
    def body(x, qs, scales, mins, out):
        for tile in OUTER(TILES):
            for l in T.thread_binding(LANES, thread="threadIdx.x"):
                for t in range(num_tokens):
                    row_dot(x, qs, scales, mins, out, tile, t, l)

    return quant_kernel("quant_gemv", qtype, n, k, body, (num_tokens, n), x_shape=(num_tokens, k))


def quant_gemv_config(target, qtype: str, n: int, k: int, screen: bool = False) -> dict:
    return {}


def schedule_quant_gemv(sch, cfg: dict) -> None:
    """Loops are written in the TIR above."""


SPEC = KernelSpec("quant_gemv", make_quant_gemv, quant_gemv_config, schedule_quant_gemv,
                  args=("x", "qs", "scales", "mins (Q4_1 only)", "row_norm (screen only)", "out",
                        "tile_max (screen only)"), source_file=__file__, scheduled=True,
                  depends=(common.__file__, quant_common.__file__, int_dot.__file__, packed.__file__))
