"""Models in the catalog: registration (CREATE MODEL, built-ins on first use) and the
facts the planner needs about a model without loading its weights again."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from catalog.errors import ModelError, ModelNotFoundError
from catalog.linear_layout import linear_formats
from catalog.model_config import ModelConfig
from catalog.quant import QuantizedTensor
from catalog.store import Catalog, ModelEntry

# A fixed English sample: the first estimate of characters per token, refined from real prompts.
_SAMPLE = ("The delivery was quick and the price was fair, but the quality of the stitching is poor. "
           "I would buy it again if it came in a larger size; customer service answered within a day.")
_MARKER = "\x00USER\x00"


def describe_loaded(loaded) -> dict:
    """Planner-facing facts: chat template overhead, tokens per character, weight bytes per format, the format
    each linear is stored in as the model is built (qkv, o, gate_up, down, lm_head: 'Q4_1', 'Q8_0', 'fp32', ...)."""
    tok = loaded.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": _MARKER}])
    head, _, tail = chat.partition(_MARKER)
    dense_params = sum(w.rows * w.cols if isinstance(w, QuantizedTensor) else w.numel() for w in loaded.weights.values())
    native = sum(w.blocks.numel() if isinstance(w, QuantizedTensor) else w.numel() * 4 for w in loaded.weights.values())
    # a tied lm_head reads the embedding matrix again on every token
    head_params = loaded.config.vocab_size * loaded.config.hidden_size if loaded.config.tie_word_embeddings else 0
    return {
        "chat_prefix_tokens": len(tok.encode(head, add_special_tokens=False)),
        "chat_suffix_tokens": len(tok.encode(tail, add_special_tokens=False)),
        "chat_prefix_text": head,
        "tokens_per_char": len(tok.encode(_SAMPLE, add_special_tokens=False)) / len(_SAMPLE),
        "weight_bytes": {"fp32": 4 * (dense_params + head_params), "bf16": 2 * (dense_params + head_params),
                         "native": native + 4 * head_params},
        "weight_formats": list(loaded.weight_formats),
        "native_format": loaded.native_format,
        "linear_formats": linear_formats(loaded.weights, loaded.config),
        "tokenizer_digest": tokenizer_digest(tok),
    }


def tokenizer_digest(tok) -> str:
    """Equal for tokenizers that map every text to the same ids: a draft model must share its target's."""
    import hashlib

    vocab = sorted(tok.backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    return hashlib.sha256("\n".join(t for t, _ in vocab).encode()).hexdigest()[:16]


def register_loaded(catalog: Catalog, name: str, loaded) -> ModelEntry:
    return catalog.register_model(name, str(loaded.path), loaded.format,
                                  dataclasses.asdict(loaded.config), describe_loaded(loaded))


def ensure_model(catalog: Catalog, name: str) -> ModelEntry:
    """The catalog entry for `name`; built-in models register themselves on first use."""
    entry = catalog.get_model(name)
    if entry is not None:
        return _with_linear_formats(catalog, entry)
    from catalog.registry import builtin_models, load_cached

    builtins = builtin_models()
    if name.lower() not in builtins:
        known = sorted({m.name for m in catalog.list_models()} | set(builtins))
        raise ModelNotFoundError(f"unknown model {name!r} (known: {', '.join(known)}; add one with CREATE MODEL)")
    return register_loaded(catalog, name, load_cached(builtins[name.lower()], name.lower()))


def _with_linear_formats(catalog: Catalog, entry: ModelEntry) -> ModelEntry:
    """An entry registered before describe_loaded recorded each linear's format gets it once, from its file
    (a model load, which the first query would do anyway); where the file cannot be read, the entry stays as
    it is and the planner explains its weight path without per-operator formats."""
    if "linear_formats" in entry.meta or not Path(entry.path).exists():
        return entry
    try:
        loaded = load_entry(entry)
    except ModelError:
        return entry
    formats = linear_formats(loaded.weights, loaded.config)
    catalog.update_model_meta(entry.name, linear_formats=formats)
    return dataclasses.replace(entry, meta={**entry.meta, "linear_formats": formats})


def create_model(catalog: Catalog, name: str, path: str, replace: bool = False) -> ModelEntry:
    """CREATE MODEL: load once to check the file really is a model, then record it."""
    from catalog.registry import load_cached

    if not replace and catalog.get_model(name) is not None:
        raise ValueError(f"model {name!r} already exists (use CREATE OR REPLACE MODEL)")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    return register_loaded(catalog, name, load_cached(p.resolve(), name.lower()))


def load_entry(entry: ModelEntry):
    """The loaded model (weights, tokenizer) behind a catalog entry; cached per process."""
    from catalog.registry import load_cached

    if not Path(entry.path).exists():
        raise ModelNotFoundError(f"model {entry.name!r}: file not found: {entry.path}")
    return load_cached(entry.path, entry.name)


def config_of(entry: ModelEntry) -> ModelConfig:
    c = dict(entry.config)
    c["eos_token_ids"] = tuple(c.get("eos_token_ids") or ())
    return ModelConfig(**c)
