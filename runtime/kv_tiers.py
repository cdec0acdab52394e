"""KV blocks beyond the pool: a host tier (RAM, compressed) and a disk tier that survives restarts.

Blocks are content-addressed by their radix path's digest (runtime/prefix_cache.py: each block's digest chains
its parent's with its own tokens), inside a namespace keyed by the model file's hash, the cache's element type,
the block size, the KV layout and FORMAT_VERSION, so a block is only ever reused by the engine that could have
computed it. Blocks the prefix cache evicts go to the host tier; full prompt blocks are also written through to
the disk tier, on a background thread (the engine never waits for a disk write). On a prefix miss in memory the
KV manager asks the tiers for the following blocks and loads them into pool blocks before the step's forward.
Loading is asynchronous: when a request is submitted, the reads (file, checksum, decompression) of its prompt
blocks that are in a tier but not in the pool start on a background thread, so they overlap the engine's steps,
and admission only copies the bytes into the pool.

Which tiers are worth it is the optimizer's call (EngineConfig.kv_restore, priced in planner/choose.py from
measured restore rates against recomputing a block): a tier not in `load_tiers` is neither filled nor read,
so preemption without the host tier recomputes, and with it swaps (evicted blocks come back from RAM).

A disk entry is one file: a header (magic, format version, payload length, BLAKE2b checksum) and the block's
K then V bytes. A truncated, mismatched or corrupt entry is detected on read, deleted and never used. The disk
tier is size-bounded: the least recently used entries go first.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import tempfile
import struct
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

FORMAT_VERSION = 1
MAGIC = b"SQKV"
HEADER = struct.Struct("<4sHHQ16s")  # magic, version, reserved, payload bytes, checksum
DEFAULT_HOST_BYTES = 256 << 20
DEFAULT_DISK_BYTES = 2 << 30
TIERS = ("memory", "host", "disk")
MAX_PREFETCH_BYTES = 128 << 20  # blocks read ahead and not yet restored; the oldest are dropped beyond it


@lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime: float) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def model_digest(path: str | os.PathLike) -> str:
    """The model's content hash: its GGUF file, or every file of an HF directory (in name order)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        st = f.stat()
        h.update(_file_digest(str(f), st.st_size, st.st_mtime).encode())
    return h.hexdigest()


def namespace(model_hash: str, dtype: torch.dtype, block_size: int, layout: tuple[int, ...]) -> str:
    """The directory name of one engine's compatible blocks."""
    key = f"{model_hash}|{dtype}|{block_size}|{layout}|v{FORMAT_VERSION}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


def _shuffle(raw: bytes, itemsize: int) -> bytes:
    """Byte planes (every element's first bytes, then its second, ...): float bytes compress far better so."""
    return np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(planes: bytes, itemsize: int) -> bytes:
    return np.frombuffer(planes, np.uint8).reshape(itemsize, -1).T.tobytes()


class DiskTier:
    """Files under `root`, one per block; bounded to `budget` bytes, least recently used evicted first."""

    def __init__(self, root: Path, budget: int = DEFAULT_DISK_BYTES, describe: dict | None = None):
        self.root = root
        self.budget = budget
        root.mkdir(parents=True, exist_ok=True)
        if describe is not None and not (root / "meta.json").exists():
            (root / "meta.json").write_text(json.dumps(describe))
        self.bytes = sum(p.stat().st_size for p in root.glob("*.kv"))

    def path(self, digest: bytes) -> Path:
        return self.root / f"{digest.hex()}.kv"

    def contains(self, digest: bytes) -> bool:
        return self.path(digest).exists()

    def get(self, digest: bytes) -> bytes | None:
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) >= HEADER.size:
            magic, version, _, length, checksum = HEADER.unpack_from(data)
            payload = data[HEADER.size:]
            if magic == MAGIC and version == FORMAT_VERSION and length == len(payload) and _checksum(payload) == checksum:
                os.utime(path)  # recently used
                return payload
        self._remove(path)  # truncated, another format, or corrupt: never used
        return None

    def put(self, digest: bytes, payload: bytes) -> None:
        path = self.path(digest)
        if path.exists():
            return
        tmp = path.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_bytes(HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload), _checksum(payload)) + payload)
        os.replace(tmp, path)  # readers see the whole entry or none
        self.bytes += HEADER.size + len(payload)
        if self.bytes > self.budget:
            self._evict()

    def _evict(self) -> None:
        entries = sorted(self.root.glob("*.kv"), key=lambda p: p.stat().st_mtime)
        for path in entries:
            if self.bytes <= self.budget * 0.9:
                break
            self._remove(path)

    def _remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
            self.bytes -= size
        except OSError:
            pass


class HostTier:
    """Compressed blocks in RAM, bounded to `budget` bytes, least recently used dropped first."""

    def __init__(self, budget: int, itemsize: int):
        self.budget, self.itemsize = budget, itemsize
        self.bytes = 0
        self._blocks: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def contains(self, digest: bytes) -> bool:
        with self._lock:
            return digest in self._blocks

    def get(self, digest: bytes) -> bytes | None:
        with self._lock:
            packed = self._blocks.get(digest)
            if packed is not None:
                self._blocks.move_to_end(digest)
        return None if packed is None else _unshuffle(zlib.decompress(packed), self.itemsize)

    def put(self, digest: bytes, raw: bytes) -> None:
        packed = zlib.compress(_shuffle(raw, self.itemsize), 1)
        with self._lock:
            if digest in self._blocks:
                return
            self._blocks[digest] = packed
            self.bytes += len(packed)
            while self.bytes > self.budget and self._blocks:
                _, dropped = self._blocks.popitem(last=False)
                self.bytes -= len(dropped)


@dataclass(frozen=True)
class KVTierSpec:
    """Where an engine keeps KV blocks beyond its pool: `home`/kv/<namespace> on disk, plus host RAM."""
    home: Path
    model_name: str
    model_path: str
    host_bytes: int = DEFAULT_HOST_BYTES
    disk_bytes: int = DEFAULT_DISK_BYTES

    def store(self, cache) -> TieredKVStore:
        layout = (tuple(cache.k.shape[:1]) + tuple(cache.k.shape[2:]), tuple(cache.v.shape[2:]))
        model_hash = model_digest(self.model_path)
        name = namespace(model_hash, cache.dtype, cache.block_size, layout)
        describe = {"model": self.model_name, "model_hash": model_hash, "dtype": str(cache.dtype).removeprefix("torch."),
                    "block_size": cache.block_size, "format_version": FORMAT_VERSION}
        disk_root = Path(self.home) / "kv" / name if self.disk_bytes > 0 else None
        return TieredKVStore(cache, disk_root, self.host_bytes, self.disk_bytes, describe)


class TieredKVStore:
    """The tiers of one engine's KV cache (runtime.model_runner.PagedKVCache), as the KV manager sees them:
    `contains`, `restore` into a pool block, `prefetch` ahead of it, and `evicted` / `computed` to keep a block
    beyond the pool. Only the tiers in `load_tiers` (the plan's kv_restore) are filled and read."""

    def __init__(self, cache, disk_root: Path | None, host_bytes: int = DEFAULT_HOST_BYTES,
                 disk_bytes: int = DEFAULT_DISK_BYTES, describe: dict | None = None):
        self.cache = cache
        # byte planes of the element type (int8 blocks' fp32 scales are a small tail, shuffled alike)
        self.host = HostTier(host_bytes, cache.dtype.itemsize) if host_bytes > 0 else None
        self.disk = DiskTier(disk_root, disk_bytes, describe) if disk_root is not None else None
        self.load_tiers: frozenset[str] = frozenset(("host", "disk"))
        self.in_memory: Callable[[bytes], bool] = lambda digest: False  # the KV manager's: is it in the pool?
        self._pending: dict[tuple[str, bytes], bytes] = {}  # (tier, digest) -> raw block on its way (readable)
        # digest -> (tier, read of (raw, tier)): blocks being read ahead
        self._prefetched: OrderedDict[bytes, tuple[str, Future]] = OrderedDict()
        self._prefetch_lock = threading.Lock()
        self._max_prefetched = max(1, MAX_PREFETCH_BYTES // self.cache.block_bytes)

    # --- what the KV manager and the engine call (no torch there) ------------------------------------------------
    def contains(self, digest: bytes) -> str | None:
        """The tier holding the block, among the loaded ones: 'host' or 'disk' (None: neither). A block read ahead
        counts as in the tier it was read from."""
        with self._prefetch_lock:
            ahead = self._prefetched.get(digest)
        if ahead is not None and not ahead[1].cancelled():
            return ahead[0]
        for tier, store in self._loaded():
            if (tier, digest) in self._pending or store.contains(digest):
                return tier
        return None

    def prefetch(self, digests) -> None:
        """Start reading ahead the blocks of a prompt's radix path (chain digests, in order) that are in a tier
        and not in the pool, up to the first that is in neither: restore() then finds them read."""
        for digest in digests:
            if self.in_memory(digest):
                continue
            with self._prefetch_lock:
                if digest in self._prefetched:
                    continue
            tier = self.contains(digest)
            if tier is None:
                return  # restore never gets past a block nobody has
            future = _READER.submit(self._read, digest)
            with self._prefetch_lock:
                self._prefetched[digest] = (tier, future)
                while len(self._prefetched) > self._max_prefetched:
                    self._prefetched.popitem(last=False)[1][1].cancel()

    def restore(self, digest: bytes, block: int) -> str | None:
        """Load the block's K/V into pool block `block`; the tier it came from, or None (gone or corrupt)."""
        with self._prefetch_lock:
            ahead = self._prefetched.pop(digest, None)
        raw, tier = None, None
        if ahead is not None and not ahead[1].cancelled():
            raw, tier = ahead[1].result()  # waits only for a read still under way
        if raw is None:
            raw, tier = self._read(digest)
        if raw is None or len(raw) != self.cache.block_bytes:
            return None
        self.cache.write_block(block, raw)
        return tier

    def evicted(self, block: int, digest: bytes) -> None:
        """The prefix cache drops this block from the pool: keep it in the host tier (a preempted sequence's blocks
        come back from there: swap rather than recompute)."""
        if self.host is not None and "host" in self.load_tiers:
            self._enqueue("host", digest, self.cache.read_block(block))

    def computed(self, block: int, digest: bytes) -> None:
        """A full prompt block is computed: write it through to the disk tier."""
        if self.disk is not None and "disk" in self.load_tiers and not self.disk.contains(digest):
            self._enqueue("disk", digest, self.cache.read_block(block))

    def flush(self) -> None:
        """Wait until every queued block is in its tier."""
        _WRITER.queue.join()

    def close(self) -> None:
        self.flush()

    # --- internals --------------------------------------------------------------------------------------------
    def _loaded(self):
        """(name, tier) of the tiers this plan loads that exist here, nearest first."""
        for name, store in (("host", self.host), ("disk", self.disk)):
            if name in self.load_tiers and store is not None:
                yield name, store

    def _read(self, digest: bytes) -> tuple[bytes | None, str | None]:
        """The block's raw bytes from the first loaded tier that has it (a queued write counts as there)."""
        for tier, store in self._loaded():
            raw = self._pending.get((tier, digest)) or store.get(digest)
            if raw is not None:
                return raw, tier
        return None, None

    def _enqueue(self, tier: str, digest: bytes, raw: bytes) -> None:
        if (tier, digest) in self._pending:
            return
        self._pending[(tier, digest)] = raw
        if not _WRITER.put(self.host if tier == "host" else self.disk, self._pending, (tier, digest), raw):
            self._pending.pop((tier, digest), None)  # the tiers are behind: drop this block, never stall the engine


class _Writer:
    """One background thread for every engine's tiers. Its work items hold the tier and the pending map, never
    the store: an engine that is dropped frees its KV pool at once, while its last blocks still land."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, tier, pending: dict, key, raw: bytes) -> bool:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="sqlm-kv-tiers", daemon=True)
                self._thread.start()
        try:
            self.queue.put_nowait((tier, pending, key, raw))
            return True
        except queue.Full:
            return False

    def _work(self) -> None:
        while True:
            tier, pending, key, raw = self.queue.get()
            try:
                tier.put(key[1], raw)
            except OSError:
                pass  # a full or read-only disk loses the block, never the request
            finally:
                pending.pop(key, None)
                self.queue.task_done()


_WRITER = _Writer()
# one reader for every engine's read-ahead: file reads, checksums and zlib release the GIL
_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlm-kv-reader")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.view(torch.uint8).numpy().tobytes()


def _from_bytes(raw: bytes, dtype: torch.dtype) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)


def cache_namespaces(home: Path) -> list[dict]:
    """Every namespace under `home`/kv with its entries and bytes (for `sqlm cache`)."""
    root = home / "kv"
    out = []
    for d in sorted(root.iterdir()) if root.exists() else []:
        if not d.is_dir():
            continue
        files = list(d.glob("*.kv"))
        meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
        out.append({"namespace": d.name, **meta, "entries": len(files), "bytes": sum(f.stat().st_size for f in files)})
    return out


def measure_restore_rates(directory: str | os.PathLike | None = None, block_bytes: int = 1 << 20) -> dict[str, float]:
    """Bytes per second a block comes back into a pool tensor at from each tier, the way restore() does it: host
    (decompress, unshuffle, copy) and disk (read the file, verify its checksum, copy), on fp32 values shaped like
    activations. The disk figure is a read from the page cache, as of a block written recently."""
    values = torch.randn(block_bytes // 4, generator=torch.Generator().manual_seed(0))
    raw = _tensor_bytes(values)
    pool = torch.empty(block_bytes, dtype=torch.uint8)
    digest = hashlib.blake2b(raw, digest_size=16).digest()
    host = HostTier(2 * block_bytes, 4)
    host.put(digest, raw)

    def best(get) -> float:
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            pool.copy_(_from_bytes(get(digest), torch.uint8))
            seconds.append(time.perf_counter() - start)
        return block_bytes / min(seconds)
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix="sqlm-kv-rate-") as root:
        disk = DiskTier(Path(root), budget=4 * block_bytes)
        disk.put(digest, raw)
        return {"kv_host_restore_rate": best(host.get), "kv_disk_restore_rate": best(disk.get)}
