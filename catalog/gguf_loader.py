"""Load a Llama-family model from a GGUF file: config, weights (quantized blocks kept), tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from catalog.errors import UnsupportedModelError
from catalog.model_config import ModelConfig
from catalog.quant import QUANT_TYPES, QuantizedTensor
from catalog.gguf_manifest import GGUFManifest, TensorEntry, cached_manifest
from catalog.gguf_tokenizer import tokenizer_from_gguf

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral")

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def config_from_gguf(reader) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported; sqlm runs {', '.join(SUPPORTED_ARCHITECTURES)}")
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    num_heads = int(_field(reader, f"{arch}.attention.head_count"))
    head_dim = int(_field(reader, f"{arch}.rope.dimension_count", hidden // num_heads))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    vocab = _field(reader, f"{arch}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    scaling = None
    if _field(reader, f"{arch}.rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": float(_field(reader, f"{arch}.rope.scaling.factor"))}
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    eot = _field(reader, "tokenizer.ggml.eot_token_id")
    return ModelConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_layers=int(_field(reader, f"{arch}.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 2048)),
        tie_word_embeddings=not has_output,
        attention_bias=any(t.name.endswith("attn_q.bias") for t in reader.tensors),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(sorted({int(t) for t in (eos, eot) if t is not None})),
    )


def _unpermute_rows(weight, num_heads: int):
    """Undo llama.cpp's converter, which interleaves each head's two rotary halves.

    The converter stores row r = hf_row[perm[r]] with perm = arange.view(heads, 2, half).transpose(1, 2).
    """
    rows = weight.shape[0]
    perm = torch.arange(rows).view(num_heads, 2, rows // num_heads // 2).transpose(1, 2).reshape(-1)
    inverse = torch.argsort(perm)
    if isinstance(weight, QuantizedTensor):
        return weight.select_rows(inverse)
    return weight[inverse].contiguous()


def _tensor(raw: np.ndarray, qtype: str, shape: list[int], name: str) -> torch.Tensor | QuantizedTensor:
    """raw: the tensor's bytes in the file; shape: row-major (outermost first)."""
    if qtype in QUANT_TYPES:
        rows = int(np.prod(shape[:-1]))
        return QuantizedTensor(qtype, torch.from_numpy(np.array(raw)).reshape(rows, -1), rows, shape[-1])
    if qtype in _FLOAT_TYPES:
        return torch.from_numpy(raw.view(_FLOAT_TYPES[qtype]).astype(np.float32)).reshape(shape)
    if qtype == "BF16":
        return torch.from_numpy(np.array(raw).view(np.int16)).view(torch.bfloat16).float().reshape(shape)
    raise UnsupportedModelError(f"tensor {name} has type {qtype}; sqlm reads F32, F16, BF16, {', '.join(QUANT_TYPES)}")


def read_manifest(path: Path) -> GGUFManifest:
    """Everything but the tensor bytes, through the gguf package (slow: it parses every vocabulary string)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    config = config_from_gguf(reader)
    tensors = tuple(
        TensorEntry(t.name, t.tensor_type.name, tuple(int(s) for s in reversed(t.shape)), int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
    )
    return GGUFManifest(config, _field(reader, "general.architecture"), tokenizer_from_gguf(reader, config), tensors)


def load_gguf(path: Path):
    from catalog.loader import LoadedModel

    manifest = cached_manifest(path)
    config = manifest.config
    data = np.memmap(path, dtype=np.uint8, mode="r")
    weights: dict = {}
    for t in manifest.tensors:
        name = hf_name(t.name)
        if name is None:
            continue  # e.g. rope_freqs: recomputed from the config
        w = _tensor(data[t.offset : t.offset + t.nbytes], t.qtype, list(t.shape), t.name)
        if manifest.architecture == "llama" and name.endswith("q_proj.weight"):
            w = _unpermute_rows(w, config.num_heads)
        elif manifest.architecture == "llama" and name.endswith("k_proj.weight"):
            w = _unpermute_rows(w, config.num_kv_heads)
        weights[name] = w
    return LoadedModel(name=path.stem, path=path, format="gguf", config=config, tokenizer=manifest.tokenizer, weights=weights)
