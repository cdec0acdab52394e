"""The bf16 pair dot product of the bf16 matmul, one definition per instruction set.

    acc[l] + w[2l + 1] * x[1] + w[2l] * x[0]    (fp32 lanes; w: 2 * lanes bf16; x: one pair, broadcast)

AVX512-BF16 has it as one instruction, vdpbf16ps: a product of two bf16 is exact in fp32, each of
the two additions rounds once (like an FMA), denormals flush to zero. TVM 0.27 cannot hand bf16
vectors to an LLVM intrinsic (its bf16 legalization widens them to fp32 first, and its LLVM codegen
has no bf16 vector type without it), so the kernel keeps bf16 as uint16 and calls a two-line LLVM
IR function, imported into its module (`pragma_import_llvm`) and inlined, that bitcasts to bf16
for the instruction. Elsewhere each bf16 becomes the fp32 with the same upper 16 bits (a shift or
a mask) and the two additions are two FMAs in the instruction's order: the same bits, except that
denormals are kept (on a GPU a multiply and an add: the product is exact, so that rounds as an FMA).
"""
from __future__ import annotations

from codegen.target import Target

_DPBF16_LLVM = """
define internal <16 x float> @sqlm_dpbf16ps(<16 x float> %acc, <32 x i16> %w, <32 x i16> %x) alwaysinline {
  %wb = bitcast <32 x i16> %w to <32 x bfloat>
  %xb = bitcast <32 x i16> %x to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %wb, <32 x bfloat> %xb)
  ret <16 x float> %r
}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
"""


def has_instruction(target: Target) -> bool:
    return not target.is_gpu and target.has("avx512_bf16")


def llvm_import(target: Target) -> str | None:
    """The LLVM IR the kernel's module imports for `dot`, or None."""
    return _DPBF16_LLVM if has_instruction(target) else None


def dot(target: Target, acc, w_pairs, x_pair, lanes: int = 16):
    """acc (fp32 x lanes) + per lane w_pairs' pair (uint16 x 2 lanes) dotted with x_pair (int32: the two bf16
    of x, low half first), broadcast to every lane."""
    from tvm.script import tirx as T

    if has_instruction(target) and lanes == 16:
        return T.call_extern("float32x16", "sqlm_dpbf16ps", acc, w_pairs,
                             T.reinterpret("uint16x32", T.Broadcast(x_pair, 16)))
    words = T.reinterpret(f"uint32x{lanes}", w_pairs) if lanes > 1 else T.reinterpret("uint32", w_pairs)
    high, shift = T.uint32(0xFFFF0000), T.uint32(16)
    if lanes > 1:
        high, shift = T.Broadcast(high, lanes), T.Broadcast(shift, lanes)
    x_word = T.reinterpret("uint32", x_pair)
    x_odd = T.reinterpret("float32", x_word & T.uint32(0xFFFF0000))
    x_even = T.reinterpret("float32", x_word << T.uint32(16))
    if lanes > 1:
        x_odd, x_even = T.Broadcast(x_odd, lanes), T.Broadcast(x_even, lanes)
    ftype = f"float32x{lanes}" if lanes > 1 else "float32"
    w_odd, w_even = T.reinterpret(ftype, words & high), T.reinterpret(ftype, words << shift)
    if target.is_gpu:  # no fma in TVM's CUDA codegen; the product is exact, so a multiply and an add round alike
        return acc + w_odd * x_odd + w_even * x_even
    return T.fma(w_even, x_even, T.fma(w_odd, x_odd, acc))
