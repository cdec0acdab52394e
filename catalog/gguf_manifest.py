"""A GGUF file's metadata, parsed once and kept in $SQLM_HOME/models.

The gguf package parses every vocabulary string into its own numpy view, which takes
seconds; the manifest (config, tokenizer, tensor table with file offsets) makes every
later load a memory map plus a JSON read. Keyed by path, size and mtime, so an edited
or replaced file is parsed again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from catalog.model_config import ModelConfig

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TensorEntry:
    name: str
    qtype: str
    shape: tuple[int, ...]  # row-major, outermost first
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class GGUFManifest:
    config: ModelConfig
    architecture: str
    tokenizer: object  # catalog.tokenizer.Tokenizer
    tensors: tuple[TensorEntry, ...]

    def to_json(self) -> str:
        tok = self.tokenizer
        return json.dumps({
            "version": MANIFEST_VERSION,
            "config": dataclasses.asdict(self.config),
            "architecture": self.architecture,
            "tokenizer": {"backend": tok.backend.to_str(), "chat_template": tok.chat_template, "bos_token": tok.bos_token,
                          "eos_token": tok.eos_token, "eos_token_ids": sorted(tok.eos_token_ids), "add_bos": tok.add_bos},
            "tensors": [dataclasses.astuple(t) for t in self.tensors],
        })

    @classmethod
    def from_json(cls, text: str) -> "GGUFManifest":
        from tokenizers import Tokenizer as HFTokenizer

        from catalog.tokenizer import Tokenizer

        d = json.loads(text)
        cfg = d["config"]
        cfg["eos_token_ids"] = tuple(cfg["eos_token_ids"])
        t = d["tokenizer"]
        tokenizer = Tokenizer(HFTokenizer.from_str(t["backend"]), chat_template=t["chat_template"], bos_token=t["bos_token"],
                              eos_token=t["eos_token"], eos_token_ids=tuple(t["eos_token_ids"]), add_bos=t["add_bos"])
        tensors = tuple(TensorEntry(n, q, tuple(s), o, b) for n, q, s, o, b in d["tensors"])
        return cls(ModelConfig(**cfg), d["architecture"], tokenizer, tensors)


def _cache_file(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{MANIFEST_VERSION}".encode()).hexdigest()[:24]
    from catalog.store import default_home

    return default_home() / "models" / f"{key}.json"


def cached_manifest(path: Path) -> GGUFManifest:
    from catalog.gguf_loader import read_manifest

    cache = _cache_file(path)
    if cache.exists():
        try:
            return GGUFManifest.from_json(cache.read_text())
        except (ValueError, KeyError, TypeError):
            pass  # a stale or damaged manifest is rebuilt below
    manifest = read_manifest(path)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent reader sees the old file or the whole new one.
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False, suffix=".tmp") as f:
            f.write(manifest.to_json())
        os.replace(f.name, cache)
    except OSError:
        pass  # a read-only home only costs speed
    return manifest
