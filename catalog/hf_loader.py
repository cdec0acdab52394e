"""Load a Llama-family model from a Hugging Face directory: config.json, *.safetensors, tokenizer files."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from catalog.errors import ModelNotFoundError, UnsupportedModelError
from catalog.model_config import ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def config_from_hf(cfg: dict) -> ModelConfig:
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported; sqlm runs {', '.join(SUPPORTED_MODEL_TYPES)}")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    num_heads = cfg["num_attention_heads"]
    # transformers 5 nests RoPE settings under rope_parameters; older configs keep them flat.
    rope = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    return ModelConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        attention_bias=cfg.get("attention_bias", model_type == "qwen2"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
    )


def _tokenizer(path: Path, config: ModelConfig):
    from tokenizers import Tokenizer as HFTokenizer

    from catalog.tokenizer import Tokenizer

    tok_file = path / "tokenizer.json"
    if not tok_file.exists():
        raise ModelNotFoundError(f"{path} has no tokenizer.json")
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").exists() else {}

    def token_text(value):
        return value.get("content") if isinstance(value, dict) else value

    return Tokenizer(
        HFTokenizer.from_file(str(tok_file)),
        chat_template=tok_cfg.get("chat_template"),
        bos_token=token_text(tok_cfg.get("bos_token")),
        eos_token=token_text(tok_cfg.get("eos_token")),
        eos_token_ids=config.eos_token_ids,
        add_bos=bool(tok_cfg.get("add_bos_token", False)),
    )


def load_hf_dir(path: Path):
    from catalog.loader import LoadedModel

    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelNotFoundError(f"{path} is not a model directory: no config.json")
    config = config_from_hf(json.loads(config_file.read_text()))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{path} has no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update({k: v.float() for k, v in load_file(str(f)).items()})
    return LoadedModel(name=path.name, path=path, format="hf", config=config, tokenizer=_tokenizer(path, config), weights=weights)
