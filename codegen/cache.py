"""On-disk cache of compiled kernels under `$SQLM_HOME/kernels` (default ~/.sqlm).

A kernel's key covers its operator name, static parameters (shapes, dtypes, quant
type), the target, the TVM version and a digest of the Python source that generates
it, so editing a schedule recompiles and a second run with nothing changed compiles
nothing. Libraries are written to a temporary name and renamed, so a crash never
leaves a half-written file behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def default_root() -> Path:
    """$SQLM_KERNEL_CACHE, else $SQLM_HOME/kernels: processes that share a directory share compiled kernels (writes
    are atomic renames, so concurrent builders never tear a file)."""
    from catalog.store import default_home

    explicit = os.environ.get("SQLM_KERNEL_CACHE")
    return Path(explicit).expanduser() if explicit else default_home() / "kernels"


def source_digest(*paths: str) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class KernelKey:
    op: str
    params: tuple[tuple[str, Any], ...]
    target: str
    tvm_version: str
    source: str

    @property
    def digest(self) -> str:
        text = json.dumps([self.op, list(self.params), self.target, self.tvm_version, self.source])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def filename(self) -> str:
        return f"{self.op}-{self.digest}.so"


@dataclass
class CacheStats:
    num_compiled: int = 0
    num_loaded: int = 0


@dataclass
class KernelCache:
    root: Path = field(default_factory=default_root)
    stats: CacheStats = field(default_factory=CacheStats)

    def path(self, key: KernelKey) -> Path:
        return self.root / key.filename

    def load_or_build(self, key: KernelKey, build: Callable[[], Any]):
        """The runtime module for `key`: loaded from disk, or built, exported and loaded."""
        import tvm

        path = self.path(key)
        if path.exists():
            self.stats.num_loaded += 1
            return tvm.runtime.load_module(str(path))
        executable = build()
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=self.root)
        os.close(fd)
        try:
            executable.export_library(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        meta = {"op": key.op, "params": [list(p) for p in key.params], "target": key.target,
                "tvm_version": key.tvm_version, "source": key.source}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        self.stats.num_compiled += 1
        return tvm.runtime.load_module(str(path))
