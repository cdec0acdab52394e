"""What the catalog records of a model for the planner: each linear's weight format as the model is built."""
from __future__ import annotations

import dataclasses

import pytest

from catalog.loader import load_model
from catalog.model_catalog import create_model, describe_loaded, ensure_model
from catalog.store import Catalog
from planner.context import ModelFacts

# the tiny GGUF stores q/k/v as Q4_1/Q4_0/Q8_0 (stacked as one fp32 matrix), o as F16 (read as fp32),
# gate and up as Q4_1, down as Q8_0, the untied lm_head as BF16 (read as fp32)
TINY_GGUF_LINEARS = {"qkv": "fp32", "o": "fp32", "gate_up": "Q4_1", "down": "Q8_0", "lm_head": "fp32"}


@pytest.fixture
def catalog(tmp_path):
    c = Catalog(tmp_path / "home")
    yield c
    c.close()


def test_linear_formats_as_the_model_is_built(tiny_llama):
    assert describe_loaded(load_model(tiny_llama.gguf_path))["linear_formats"] == TINY_GGUF_LINEARS
    dense = describe_loaded(load_model(tiny_llama.hf_dir))["linear_formats"]
    assert dense == dict.fromkeys(("qkv", "o", "gate_up", "down", "lm_head"), "fp32")


def test_the_default_model_keeps_q4_1_linears_and_a_q8_0_lm_head(smollm2):
    assert describe_loaded(smollm2)["linear_formats"] == {"qkv": "Q4_1", "o": "Q4_1", "gate_up": "Q4_1",
                                                          "down": "Q4_1", "lm_head": "Q8_0"}


def _register_old_entry(catalog: Catalog, path, name: str = "tiny"):
    """An entry as catalogs written before linear formats were recorded hold it."""
    loaded = load_model(path)
    meta = {k: v for k, v in describe_loaded(loaded).items() if k != "linear_formats"}
    catalog.register_model(name, str(path), loaded.format, dataclasses.asdict(loaded.config), meta)


def test_an_old_entry_learns_its_linear_formats_once_from_its_file(catalog, tiny_llama):
    _register_old_entry(catalog, tiny_llama.gguf_path)
    assert ModelFacts.from_entry(catalog.get_model("tiny")).linear_formats is None
    entry = ensure_model(catalog, "tiny")
    assert entry.meta["linear_formats"] == TINY_GGUF_LINEARS
    assert catalog.get_model("tiny").meta["linear_formats"] == TINY_GGUF_LINEARS  # stored, not described again
    assert dict(ModelFacts.from_entry(entry).linear_formats) == TINY_GGUF_LINEARS


def test_an_old_entry_whose_file_is_gone_still_plans(catalog, tiny_llama, tmp_path):
    moved = tmp_path / "moved.gguf"
    moved.write_bytes(tiny_llama.gguf_path.read_bytes())
    _register_old_entry(catalog, moved)
    moved.unlink()
    entry = ensure_model(catalog, "tiny")
    assert "linear_formats" not in entry.meta
    assert ModelFacts.from_entry(entry).linear_formats is None


def test_create_or_replace_describes_the_model_again(catalog, tiny_llama):
    _register_old_entry(catalog, tiny_llama.gguf_path)
    entry = create_model(catalog, "tiny", str(tiny_llama.gguf_path), replace=True)
    assert entry.meta["linear_formats"] == TINY_GGUF_LINEARS
