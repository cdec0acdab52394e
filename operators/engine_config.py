"""The engine's configuration: one frozen, validated snapshot, named as the SQL settings are (DESIGN.md).

The optimizer produces it for every model call (planner/choose.py: each knob decided and priced, the SET
ones obeyed), the runtime builds the model and the engine from it, and the server runs the one its
typical request was planned with. `kv_cache_memory=None` means default_kv_cache_memory(), resolved when
the engine starts; `kv_cache_dtype='auto'` the weights' own (bf16 for bf16 weights, else fp32).
`prefill_chunk_tokens` is the per-step token budget (Sarathi-Serve): decodes take one token each,
prefill chunks fill what is left.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

_DEFAULT_KV_SHARE = 0.2  # of the memory available when the engine starts
_DEFAULT_KV_CAP = 2 << 30  # bytes; a 135M model never needs more for batch work on this class of machine

CHOICES = {
    "scheduling": ("fcfs", "spf"),
    "weight_format": ("fp32", "bf16", "native"),
    "kernels": ("torch", "tvm"),
    "kv_cache_dtype": ("auto", "fp32", "bf16", "int8"),
    "attention_kernel": ("tvm", "torch"),  # codegen's paged kernel | gather + SDPA
    "prefill_dtype": ("fp32", "bf16"),
    "speculative": ("off", "ngram", "draft"),
    "kv_restore": ("host,disk", "host", "disk", "none"),
}


def default_kv_cache_memory() -> int:
    """A fifth of the RAM available right now, at most 2 GiB (the machine is shared)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        available = 4 << 30
    return max(64 << 20, min(_DEFAULT_KV_CAP, int(available * _DEFAULT_KV_SHARE)))


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    kv_cache_memory: int | None = None  # bytes of the KV pool
    kv_block_size: int = 16  # tokens per KV block
    max_batch_size: int = 256  # sequences in one step
    prefill_chunk_tokens: int = 512  # token budget of one step
    prefix_cache: bool = True  # the radix prefix cache
    scheduling: str = "fcfs"
    weight_format: str = "fp32"  # how the model's linears hold their weights
    kernels: str = "torch"  # who runs the model's operators
    threads: int | None = None  # torch threads while the model runs (None: the process's)
    # engines the operator's requests are split over, each a Ray actor with its own pool (runtime/replicas.py);
    # 1 runs them on this process's engine
    replicas: int = 1
    kv_cache_dtype: str = "auto"
    attention_kernel: str = "tvm"
    # what the native/tvm path's quantized linears compute batches of >= bf16_min_tokens rows in
    # (codegen.quant_crossover); 'bf16' for bf16 weights, 'fp32' on every other path, where it is no choice
    prefill_dtype: str = "fp32"
    # speculative decoding (runtime/speculation.py): drafts from n-gram prompt lookup or a smaller draft model,
    # up to num_speculative_tokens a decoding sequence and step, verified in one multi-token pass
    speculative: str = "off"
    num_speculative_tokens: int = 5
    draft_model: str | None = None  # the catalog model that drafts when speculative = 'draft'
    # drafts only while at most this many sequences decode: above it a step is compute-bound and verifying costs
    # more than it saves (vLLM's speculative_disable_by_batch_size); the optimizer prices where that is
    speculative_max_batch: int = 256
    # a sequence drafts while its latest drafts (runtime/acceptance.py) are accepted at least this often: below
    # it verifying costs more than it saves. The optimizer prices the break-even from the cost model; 0 drafts
    # whatever the acceptance (SET speculative, vLLM's behaviour)
    speculative_min_acceptance: float = 0.0
    # the KV tiers (runtime/kv_tiers.py) blocks are kept in and loaded back from instead of recomputed: host RAM
    # (also what preemption swaps to) and disk; the optimizer prices loading against recomputing a block
    kv_restore: str = "host,disk"

    @property
    def kv_restore_tiers(self) -> frozenset[str]:
        return frozenset(t for t in self.kv_restore.split(",") if t != "none")

    def __post_init__(self) -> None:
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be positive bytes, got {self.kv_cache_memory}")
        if not 1 <= self.kv_block_size <= 256:
            raise ValueError(f"kv_block_size must be in 1..256, got {self.kv_block_size}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be >= 1, got {self.prefill_chunk_tokens}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError(f"num_speculative_tokens must be in 1..16, got {self.num_speculative_tokens}")
        if (self.speculative == "draft") != (self.draft_model is not None):
            raise ValueError("speculative = 'draft' needs a draft_model, and a draft_model needs speculative = 'draft'")
        if not 0.0 <= self.speculative_min_acceptance <= 1.0:
            raise ValueError(f"speculative_min_acceptance must be in 0..1, got {self.speculative_min_acceptance}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def resolved_kv_cache_memory(self) -> int:
        return self.kv_cache_memory if self.kv_cache_memory is not None else default_kv_cache_memory()

    def resolved_kv_cache_dtype(self, weight_format: str | None = None) -> str:
        """bf16 weights already round activations to bf16; a bf16 cache halves KV bytes at no further loss in
        kind. Every other format keeps fp32 K/V (token parity with fp32 peers). weight_format: the model's, when
        it was built apart from this configuration."""
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        return "bf16" if (weight_format or self.weight_format) == "bf16" else "fp32"
