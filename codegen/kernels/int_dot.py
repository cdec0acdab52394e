"""The 4-byte integer dot product of the quantized GEMV, one definition per instruction set.

    acc[l] += sum_{c<4} quant[4l + c] * x[c]    (int32 lanes; quants unsigned, x signed int8)

is one instruction with AVX512-VNNI (vpdpbusd, 16 lanes) and with Arm's dot-product
extension (sdot, 4 lanes). Without them it is a multiply-add of byte pairs into int16
(pmaddubsw) followed by a multiply-add of int16 pairs against ones into int32 (pmaddwd),
on 16 lanes with AVX512-BW and 8 with AVX2; plain NEON gets LLVM's lowering of the
portable expression. pmaddubsw saturates at int16 and sdot is signed on both sides, so
those paths take quants of at most 4 bits (15 * 127 * 2 fits int16): the GEMV splits 8-bit
quants into two nibbles there (`nibbles_only`). Where pmaddubsw is the first half, a kernel
may sum its int16 results over a whole 32-weight block first (`byte_pairs`; 16 products of at
most 15 * 127 per int16 lane: 30480 < 2^15) and widen them once per block (`widen`): one
pmaddwd and one add per block instead of one each per 4 bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

from codegen.target import Target


@dataclass(frozen=True)
class IntDot:
    name: str  # 'vnni' | 'avx512bw' | 'avx2' | 'sdot' | 'portable'
    lanes: int  # int32 lanes of one dot-product instruction
    registers: int  # vector registers of the ISA (how many accumulators a schedule may keep)

    @property
    def nibbles_only(self) -> bool:
        """True when quants above 15 would overflow (pmaddubsw saturation, sdot's signed operands)."""
        return self.name != "vnni"

    @property
    def pair_sums(self) -> bool:
        """True where the dot product is pmaddubsw then pmaddwd, so byte_pairs / widen exist."""
        return self.name in ("avx512bw", "avx2")

    def _intrinsics(self) -> tuple[str, str]:
        return {"avx512bw": ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"),
                "avx2": ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")}[self.name]

    def byte_pairs(self, quants, x4):
        """The int16 x 2 lanes sums of adjacent byte products of `quants` (uint8, at most 4 bits) with `x4`'s int8,
        broadcast to every lane (pmaddubsw)."""
        from tvm.script import tirx as T

        n = self.lanes
        xs = T.reinterpret(f"int8x{4 * n}", T.Broadcast(x4, n))
        return T.call_llvm_pure_intrin(f"int16x{2 * n}", self._intrinsics()[0], quants, xs)

    def widen(self, pairs, weight: int = 1):
        """int32 x lanes: weight * the sum of each adjacent pair of int16 (pmaddwd against `weight`)."""
        from tvm.script import tirx as T

        n = self.lanes
        return T.call_llvm_pure_intrin(f"int32x{n}", self._intrinsics()[1], pairs,
                                       T.Broadcast(T.int16(weight), 2 * n))

    def dot(self, acc, quants, x4):
        """acc (int32 x lanes) + the per-lane dot product of `quants` (uint8 x 4 lanes) with the four
        int8 of `x4` (one int32 holding them), broadcast to every lane."""
        from tvm.script import tirx as T

        n, q_bytes = self.lanes, 4 * self.lanes
        xs = T.reinterpret(f"int8x{q_bytes}", T.Broadcast(x4, n))
        if self.name == "vnni":
            return T.call_llvm_pure_intrin(f"int32x{n}", "llvm.x86.avx512.vpdpbusd.512", acc, quants, xs)
        if self.name == "sdot":
            return T.call_llvm_pure_intrin(f"int32x{n}", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc,
                                           T.reinterpret(f"int8x{q_bytes}", quants), xs)
        if self.pair_sums:
            return acc + self.widen(self.byte_pairs(quants, x4))
        # portable: byte c of every lane times x[c], widened to int32
        words = T.reinterpret(f"int32x{n}", quants)
        for c in range(4):
            quant = (words >> T.Broadcast(T.int32(8 * c), n)) & T.Broadcast(T.int32(255), n)
            x_c = T.Cast("int32", T.Cast("int8", (x4 >> T.int32(8 * c)) & T.int32(255)))
            acc = acc + quant * T.Broadcast(x_c, n)
        return acc


def int_dot_for(target: Target) -> IntDot:
    """The fastest dot product `target` has."""
    if target.arch == "aarch64":
        return IntDot("sdot", 4, 32) if target.has("dotprod") else IntDot("portable", 4, 32)
    if target.has("avx512_vnni"):
        return IntDot("vnni", 16, 32)
    if target.has("avx512bw"):
        return IntDot("avx512bw", 16, 32)
    if target.has("avx2"):
        return IntDot("avx2", 8, 16)
    return IntDot("portable", 4, 16)
