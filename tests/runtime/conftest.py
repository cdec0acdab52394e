"""Engine fixtures: the tiny random Llama built as a runnable model, and reference outputs."""
from __future__ import annotations

import pytest

@pytest.fixture(scope="session")
def tiny(tiny_llama):
    """(model, tokenizer) of the tiny random Llama (2 layers, 4 query / 2 KV heads, context 256)."""
    from catalog.loader import load_model
    from operators.llama import build_model

    loaded = load_model(tiny_llama.hf_dir)
    return build_model(loaded, "fp32"), loaded.tokenizer
