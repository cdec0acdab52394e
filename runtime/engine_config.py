"""The engine's knobs, named as the SQL settings are (DESIGN.md): one frozen, validated snapshot."""
from __future__ import annotations

import os
from dataclasses import dataclass

_DEFAULT_KV_SHARE = 0.2  # of the memory available when the engine starts
_DEFAULT_KV_CAP = 2 << 30  # bytes; a 135M model never needs more for batch work on this class of machine


def default_kv_cache_memory() -> int:
    """A fifth of the RAM available right now, at most 2 GiB (the machine is shared)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 4 << 30
    return max(64 << 20, min(_DEFAULT_KV_CAP, int(available * _DEFAULT_KV_SHARE)))


@dataclass(frozen=True)
class EngineConfig:
    """kv_cache_memory=None means default_kv_cache_memory(), resolved when the engine starts.

    prefill_chunk_tokens is the per-step token budget (Sarathi-Serve): decodes take one
    token each, prefill chunks fill what is left.
    """

    kv_cache_memory: int | None = None
    kv_block_size: int = 16
    max_batch_size: int = 256
    prefill_chunk_tokens: int = 512
    prefix_cache: bool = True
    scheduling: str = "fcfs"  # 'fcfs' | 'spf'
    kv_cache_dtype: str = "auto"  # 'fp32' | 'bf16'; auto: bf16 for a bf16 model, else fp32
    attention_kernel: str = "tvm"  # 'tvm' (codegen's paged kernel) | 'torch' (gather + SDPA reference)

    def __post_init__(self) -> None:
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be positive bytes, got {self.kv_cache_memory}")
        if not 1 <= self.kv_block_size <= 256:
            raise ValueError(f"kv_block_size must be in 1..256, got {self.kv_block_size}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be >= 1, got {self.prefill_chunk_tokens}")
        if self.scheduling not in ("fcfs", "spf"):
            raise ValueError(f"scheduling must be 'fcfs' or 'spf', got {self.scheduling!r}")
        if self.kv_cache_dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"kv_cache_dtype must be 'auto', 'fp32' or 'bf16', got {self.kv_cache_dtype!r}")
        if self.attention_kernel not in ("tvm", "torch"):
            raise ValueError(f"attention_kernel must be 'tvm' or 'torch', got {self.attention_kernel!r}")

    def resolved_kv_cache_memory(self) -> int:
        return self.kv_cache_memory if self.kv_cache_memory is not None else default_kv_cache_memory()

    def resolved_kv_cache_dtype(self, weight_format: str) -> str:
        """bf16 weights already round activations to bf16; a bf16 cache halves KV bytes at no
        further loss in kind. Every other format keeps fp32 K/V (token parity with fp32 peers)."""
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        return "bf16" if weight_format == "bf16" else "fp32"

    @classmethod
    def from_settings(cls, settings) -> EngineConfig:
        """Build from a catalog.settings.Settings snapshot; 'auto' keeps this class's default."""
        defaults = cls()
        pick = lambda name: getattr(defaults, name) if settings.is_auto(name) else getattr(settings, name)
        return cls(
            kv_cache_memory=None if settings.is_auto("kv_cache_memory") else settings.kv_cache_memory,
            kv_block_size=pick("kv_block_size"),
            max_batch_size=pick("max_batch_size"),
            prefill_chunk_tokens=pick("prefill_chunk_tokens"),
            prefix_cache=settings.prefix_cache != "off",
            scheduling=pick("scheduling"),
            kv_cache_dtype=settings.kv_cache_dtype,
        )
