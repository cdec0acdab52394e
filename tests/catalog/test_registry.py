"""Naming and finding models: the built-in default, paths, and the errors for everything else."""
import pytest

from catalog.errors import ModelNotFoundError, UnsupportedModelError
from catalog.loader import load_model
from catalog.registry import DEFAULT_MODEL, builtin_models, resolve_model


def test_default_model_is_the_installed_smollm2_gguf():
    path = builtin_models()[DEFAULT_MODEL]
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.exists()


def test_resolve_is_cached_per_process(smollm2):
    assert resolve_model("smollm2") is smollm2
    assert smollm2.config.num_layers == 30 and smollm2.config.tie_word_embeddings


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="unknown model 'gpt-17'"):
        resolve_model("gpt-17")


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model file not found"):
        load_model(tmp_path / "nope.gguf")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UnsupportedModelError, match="model_type 'bert' is not supported"):
        load_model(tmp_path)
