"""Small TE helpers shared by the kernel factories (imported only while building)."""
from __future__ import annotations


def f16_to_f32(lo, hi):
    """Two little-endian uint8 expressions -> the fp32 value of the f16 they spell."""
    from tvm import tirx

    bits = lo.astype("uint16") | (hi.astype("uint16") << tirx.const(8, "uint16"))
    return tirx.reinterpret("float16", bits).astype("float32")


def symbolic(name: str):
    """A dynamic dimension (tokens, sequences): one compiled kernel serves every size."""
    from tvm import te

    return te.var(name, dtype="int64")


def rfactor_rows(sch, block: str, rows: int, lanes: int):
    """GEMV-style schedule of a block [T, N] reducing over (outer, lanes).

    The inner `lanes` of the reduction become a vector accumulator (LLVM never
    vectorizes a float reduction by itself), `rows` output rows share each x chunk,
    and row tiles run in parallel.
    """
    blk = sch.get_sblock(block)
    t, n, outer, inner = sch.get_loops(blk)
    rf = sch.rfactor(inner, 2)
    t_, n_, outer_, lane = sch.get_loops(rf)
    n_tile, n_row = sch.split(n_, [None, rows])
    sch.reorder(n_tile, t_, outer_, n_row, lane)
    sch.unroll(n_row)
    sch.vectorize(lane)
    sch.reverse_compute_at(blk, t_)
    sch.parallel(n_tile)
    sch.decompose_reduction(rf, outer_)
    return rf


def prefetch(buf, *index, locality: int = 3, write: bool = False):
    """Hint the cache line holding buf[index] into the cache (locality 3: L1, 2: L2, 1: L3; `write`: with intent
    to write, so a store to it does not wait for the line; no fault, no effect on results; CPU only)."""
    from tvm.script import tirx as T

    return T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buf[index]), T.int32(int(write)),
                              T.int32(locality), T.int32(1))


CACHE_LINE = 64  # bytes
KV_ITEM_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


def kv_block_lines(kv_dtype: str, block_size: int, head_dim: int) -> tuple[int, int, int]:
    """How one KV head's block (paged_attention's layout: keys transposed [D, BS], values [BS, D]) of TVM dtype
    `kv_dtype` falls on cache lines, for the kernels that prefetch it: (key rows d per line, lines per value row,
    value elements per line)."""
    item = KV_ITEM_BYTES[kv_dtype]
    return (max(1, CACHE_LINE // (block_size * item)), max(1, head_dim * item // CACHE_LINE), CACHE_LINE // item)


def exp_f32(x):
    """exp(x) in fp32 from +, *, floor and an exponent-bit shift, so it vectorizes.

    LLVM lowers a vector `exp` to one libm call per lane. Cody-Waite range reduction
    x = n ln2 + f, |f| <= ln2/2, then a degree-7 Taylor polynomial: relative error
    below 1e-7 over the clamped range [-87, 88].
    """
    from tvm import tirx

    x = tirx.max(tirx.min(x, tirx.const(88.0, "float32")), tirx.const(-87.0, "float32"))
    n = tirx.floor(x * tirx.const(1.4426950408889634, "float32") + tirx.const(0.5, "float32"))
    f = x - n * tirx.const(0.693145751953125, "float32") - n * tirx.const(1.428606765330187e-06, "float32")
    p = tirx.const(1.0 / 5040, "float32")
    for c in (1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        p = p * f + tirx.const(c, "float32")
    bits = (n.astype("int32") + tirx.const(127, "int32")) << tirx.const(23, "int32")
    return p * tirx.reinterpret("float32", bits)


def vectorize_inner(sch, block: str, lanes: int):
    """Split the innermost loop of `block` by `lanes` (when it divides) and vectorize it."""
    loops = sch.get_loops(sch.get_sblock(block))
    extent = sch.get(loops[-1]).extent
    if int(extent) % lanes == 0:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)


def loop_kinds(gpu: bool, cpu_threads: bool = True):
    """(outer, vector) loop constructors for plain-TIR kernels: CPU threads and SIMD
    lanes, or on a GPU one block per outer iteration with serial inner loops.

    `cpu_threads=False` keeps the outer loop serial on the CPU: waking TVM's thread pool
    costs more than the whole of a row-wise elementwise kernel at decode sizes (measured
    2.4 -> 11 µs for a 576-wide RMSNorm with two threads on a loaded machine). Row-wise
    kernels branch on the row count instead (PARALLEL_MIN_ROWS)."""
    from tvm.script import tirx as T

    if gpu:
        return (lambda extent: T.thread_binding(extent, thread="blockIdx.x")), T.serial
    return (T.parallel if cpu_threads else T.serial), T.vectorized


# Row-wise kernels (norms, SiLU-mul, RoPE) split their rows over threads from this many rows
# (prefill chunks): below it, at decode sizes, waking the pool costs more than the rows.
PARALLEL_MIN_ROWS = 64
