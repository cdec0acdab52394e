"""How a Llama checkpoint's matrices group into the model's linears, and the format each linear runs in.

operators.llama stacks q/k/v and gate/up into one matmul each (fewer, larger GEMVs); the catalog
records each linear's format at registration so the planner can price the kernels without loading
the weights.
"""
from __future__ import annotations

import torch

from catalog.model_config import ModelConfig
from catalog.quant import QuantizedTensor

# A decoder layer's linears: each stacks loaded matrices (model.layers.{i}.<name>.weight) along rows
# into one matmul (fewer, larger GEMVs)
LAYER_LINEARS = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
                 "gate_up": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def stacked_format(weights: list) -> str:
    """The format of matrices stacked as one linear: the one they share (quantized blocks stay quantized), else
    fp32 (dequantized to be stacked)."""
    formats = {w.qtype if isinstance(w, QuantizedTensor) else _DTYPE_NAMES.get(w.dtype, str(w.dtype)) for w in weights}
    return formats.pop() if len(formats) == 1 else "fp32"


def lm_head_weight(weights: dict, config: ModelConfig):
    return weights["model.embed_tokens.weight"] if config.tie_word_embeddings else weights["lm_head.weight"]


def linear_formats(weights: dict, config: ModelConfig) -> dict[str, str]:
    """Each linear's weight format as operators.llama.build_model assembles it: qkv, o, gate_up, down, lm_head
    (where layers differ, their formats joined by '+'). catalog.model_catalog.describe_loaded records it."""
    formats = {}
    for name, parts in LAYER_LINEARS.items():
        seen = {stacked_format([weights[f"model.layers.{i}.{part}.weight"] for part in parts])
                for i in range(config.num_layers)}
        formats[name] = "+".join(sorted(seen))
    formats["lm_head"] = stacked_format([lm_head_weight(weights, config)])
    return formats
