"""The knobs of DESIGN.md's settings table: names, allowed values, validation, defaults.

`auto` always means "the optimizer decides"; any other value is a hint the
optimizer must obey. `Settings` is an immutable snapshot; `SET` builds a new one.

>>> s = Settings().with_value("max_batch_size", "16")
>>> s.max_batch_size, s.is_auto("kv_block_size")
(16, True)
>>> Settings().with_value("kv_cache_memory", "2GB").kv_cache_memory
2147483648
>>> Settings().with_value("scheduling", "lifo")
Traceback (most recent call last):
...
catalog.settings.SettingError: scheduling must be one of auto, fcfs, spf, got 'lifo'
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from types import MappingProxyType
from typing import Callable

AUTO = "auto"


class SettingError(ValueError):
    """A SET with an unknown name or a value the knob does not accept."""


_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


# More torch threads than this only oversubscribes the cores, and each new count re-measures the hardware
# profile (a count in the thousands takes seconds; 100000 crashes inside torch).
MAX_THREADS = 2 * (os.cpu_count() or 1)


@cache
def physical_memory() -> int:
    """This machine's RAM in bytes (no psutil: it is not a dependency)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_bytes(value: str) -> int:
    """'2GB' -> 2147483648; plain integers are bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise SettingError(f"kv_cache_memory must be bytes or a size like '2GB', got {value!r}")
    n = int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])  # Decimal: float() of 400 digits is inf
    if n <= 0:
        raise SettingError(f"kv_cache_memory must be positive, got {value!r}")
    return n


def _choice(name: str, *allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        v = str(value).lower()
        if v not in allowed:
            raise SettingError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return v
    return check


def _auto_or_int(name: str, low: int, high: int | None = None, why: str = "") -> Callable[[str], str | int]:
    def check(value: str) -> str | int:
        if str(value).lower() == AUTO:
            return AUTO
        try:
            n = int(str(value))
        except ValueError:
            raise SettingError(f"{name} must be auto or an integer, got {value!r}") from None
        if n < low or (high is not None and n > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise SettingError(f"{name} must be auto or {bound}{why}, got {n}")
        return n
    return check


def _rule_names(value: str) -> tuple[str, ...]:
    # Validated against the rule pipeline by the planner (catalog does not import planner).
    return tuple(sorted({part.strip() for part in str(value).split(",") if part.strip()}))


def _tiers(value: str) -> str:
    """'disk, host' -> 'host,disk' (EngineConfig.kv_restore's spelling); 'auto' and 'none' as they are."""
    v = str(value).lower().replace(" ", "")
    if v in (AUTO, "none"):
        return v
    parts = v.split(",")
    if not parts or set(parts) - {"host", "disk"} or len(set(parts)) != len(parts):
        raise SettingError(f"kv_restore must be auto, none, or tiers among host, disk (comma-separated), got {value!r}")
    return ",".join(t for t in ("host", "disk") if t in parts)


def _memory(value: str) -> int | str:
    if str(value).lower() == AUTO:
        return AUTO
    n = parse_bytes(value)
    if n > physical_memory():  # the pool is allocated up front: more than the RAM fails at the first model call
        raise SettingError(f"kv_cache_memory must be at most this machine's memory "
                           f"({physical_memory() / (1 << 30):.1f}GB), got {value!r}")
    return n


@dataclass(frozen=True)
class Knob:
    name: str
    default: str
    parse: Callable[[str], object]
    meaning: str


KNOBS: MappingProxyType = MappingProxyType({k.name: k for k in (
    Knob("kv_cache_memory", "auto", _memory, "KV pool budget in bytes (auto: a share of free RAM)"),
    Knob("kv_block_size", "auto", _auto_or_int("kv_block_size", 1, 256), "tokens per KV block"),
    Knob("max_batch_size", "auto", _auto_or_int("max_batch_size", 1), "sequences in one engine step"),
    Knob("prefill_chunk_tokens", "auto", _auto_or_int("prefill_chunk_tokens", 1),
         "token budget per step for prefill chunks"),
    Knob("prefix_cache", "auto", _choice("prefix_cache", "auto", "on", "off"), "radix prefix cache"),
    Knob("scheduling", "auto", _choice("scheduling", "auto", "fcfs", "spf"),
         "admission order: spf runs the shortest predicted output first, aged so none starves; auto: fcfs for "
         "batch SQL, spf online where earlier output lengths differ"),
    Knob("kernels", "auto", _choice("kernels", "auto", "tvm", "torch"), "kernel implementation for model operators"),
    Knob("weight_format", "auto", _choice("weight_format", "auto", "native", "fp32", "bf16"),
         "keep GGUF quantized blocks (native) or dequantize"),
    Knob("kv_cache_dtype", "auto", _choice("kv_cache_dtype", "auto", "fp32", "bf16", "int8"),
         "KV cache element type (bf16 halves KV memory and rounds K/V; int8 with per-token scales takes 0.27x)"),
    Knob("prefill_dtype", "auto", _choice("prefill_dtype", "auto", "fp32", "bf16"),
         "element type of quantized (native/tvm) matmuls over >= 64 rows (bf16 rounds activations and weights)"),
    Knob("speculative", "auto", _choice("speculative", "auto", "off", "ngram", "draft"),
         "speculative decoding: drafts from n-gram prompt lookup or a smaller draft model, verified in one step; "
         "auto: where the expected acceptance pays for the verify cost at the plan's batch size"),
    Knob("num_speculative_tokens", "auto", _auto_or_int("num_speculative_tokens", 1, 16),
         "draft tokens per sequence and step when speculating"),
    Knob("kv_restore", "auto", _tiers,
         "KV tiers kept beyond the pool and loaded back on a prefix hit instead of recomputed: host (RAM; also where "
         "preempted sequences swap to) and disk (survives restarts); auto: where loading costs less than recomputing"),
    Knob("disabled_rules", "", _rule_names, "comma-separated rewrite rule names to switch off"),
    Knob("progress", "auto", _choice("progress", "auto", "on", "off"), "progress bar for long queries"),
    Knob("threads", "auto", _auto_or_int("threads", 1, MAX_THREADS, f" (twice this machine's {os.cpu_count()} CPUs)"),
         "CPU threads for torch ops during a query"),
    Knob("replicas", "auto", _auto_or_int("replicas", 1, 64),
         "engine replicas (Ray actors, each its own process and KV pool) a model call splits its rows over, rows "
         "with shared prefixes together; auto: where the split pays for starting them on this machine's cores"),
    Knob("partition_rows", "auto", _auto_or_int("partition_rows", 1),
         "rows COPY (SELECT ...) TO streams through its model calls at a time when the query is row-wise over one "
         "table, so a source larger than memory passes through; auto: 4096"),
)})


@dataclass(frozen=True)
class Settings:
    """Parsed values by knob name; missing names take the knob's default."""

    values: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        unknown = set(self.values) - set(KNOBS)
        if unknown:
            raise SettingError(f"unknown setting {sorted(unknown)[0]!r}")

    def __getattr__(self, name: str) -> object:
        if name in KNOBS:
            raw = self.values.get(name, KNOBS[name].default)
            return KNOBS[name].parse(raw)
        raise AttributeError(name)

    def with_value(self, name: str, value: object) -> Settings:
        knob = KNOBS.get(name.lower())
        if knob is None:
            raise SettingError(f"unknown setting {name!r}; known: {', '.join(KNOBS)}")
        text = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
        knob.parse(text)  # validate now so a bad SET fails at the SET, not at the next query
        return Settings(MappingProxyType({**self.values, knob.name: text}))

    def without(self, name: str) -> Settings:
        if name.lower() not in KNOBS:
            raise SettingError(f"unknown setting {name!r}; known: {', '.join(KNOBS)}")
        return Settings(MappingProxyType({k: v for k, v in self.values.items() if k != name.lower()}))

    def is_auto(self, name: str) -> bool:
        return getattr(self, name) == AUTO

    def raw(self, name: str) -> str:
        return str(self.values.get(name, KNOBS[name].default))

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(name, value, default, meaning) for SHOW SETTINGS."""
        return [(k.name, self.raw(k.name), k.default, k.meaning) for k in KNOBS.values()]
