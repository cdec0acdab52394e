"""The Llama-family forward pass over pluggable linears, ops and attention backends.

`LlamaModel.forward` works on a flat batch of tokens ([T]); which sequence a token
belongs to, and where its K/V live, is the attention backend's business. That one
forward serves the single-sequence reference loop (ContiguousKVCache) and the
engine's ragged paged batches alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from catalog.linear_layout import LAYER_LINEARS, lm_head_weight, stacked_format
from catalog.model_config import ModelConfig
from catalog.quant import QUANT_TYPES, QuantizedTensor
from operators import tensor_ops
from operators.linear import Linear, make_linear


class AttentionBackend(Protocol):
    def attend(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The new tokens' fused projection qkv [T, (Hq + 2 Hkv) D] and RoPE tables cos/sin [T, D] ->
        attention output [T, Hq, D]. The backend applies RoPE and stores K/V (a kernel backend fuses
        both into one call)."""
        ...


@dataclass(frozen=True)
class ModelOps:
    """The elementwise/normalization operators; codegen may supply faster twins."""

    rms_norm: Callable = tensor_ops.rms_norm
    add_rms_norm: Callable = tensor_ops.add_rms_norm
    silu_mul: Callable = tensor_ops.silu_mul
    name: str = "torch"


@dataclass
class LlamaLayer:
    input_norm: torch.Tensor  # [H]
    qkv_proj: Linear  # [Hq*D + 2*Hkv*D, H]
    o_proj: Linear  # [H, Hq*D]
    post_norm: torch.Tensor  # [H]
    gate_up_proj: Linear  # [2F, H]
    down_proj: Linear  # [H, F]


class LlamaModel:
    def __init__(self, config: ModelConfig, embed: torch.Tensor, layers: list[LlamaLayer], final_norm: torch.Tensor,
                 lm_head: Linear, ops: ModelOps = ModelOps(), weight_format: str = "fp32"):
        self.config = config
        self.embed = embed  # [V, H] fp32
        self.layers = layers
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.ops = ops
        self.weight_format = weight_format
        # bf16 projections take bf16 inputs: norms write them directly (the residual stream stays fp32)
        self.activation_dtype = torch.bfloat16 if weight_format == "bf16" else torch.float32
        self.inv_freq = tensor_ops.rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionBackend) -> torch.Tensor:
        c, ops, act = self.config, self.ops, self.activation_dtype
        num_tokens = token_ids.shape[0]
        q_size, f = c.num_heads * c.head_dim, c.intermediate_size
        x = self.embed[token_ids]  # [T, H] the fp32 residual stream (a fresh tensor: updated in place)
        cos, sin = tensor_ops.rope_cos_sin(positions, self.inv_freq)  # [T, D]
        h = ops.rms_norm(x, self.layers[0].input_norm, c.rms_norm_eps, act)  # [T, H]
        for i, layer in enumerate(self.layers):
            attn = attention.attend(i, layer.qkv_proj(h), cos, sin)  # [T, Hq, D]
            # each residual add is fused with the norm that follows it
            h = ops.add_rms_norm(x, layer.o_proj(attn.reshape(num_tokens, q_size)), layer.post_norm, c.rms_norm_eps, act)
            gate_up = layer.gate_up_proj(h)  # [T, 2F]
            down = layer.down_proj(ops.silu_mul(gate_up[:, :f], gate_up[:, f:]))  # [T, H]
            next_norm = self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.final_norm
            h = ops.add_rms_norm(x, down, next_norm, c.rms_norm_eps, act)
        return h  # [T, H] final-normed

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # [N, V] fp32 (bf16 weights give bf16-rounded values)

    def greedy_tokens(self, hidden: torch.Tensor, excluded) -> list[int]:
        """Each row's argmax of compute_logits(hidden) [N, H] with its excluded ids left out (greedy sampling). An
        lm_head with an `argmax` of its own (codegen's quantized linear: an exact screen) finds it without
        computing every logit."""
        argmax = getattr(self.lm_head, "argmax", None)
        if argmax is not None:
            return argmax(hidden, excluded)
        return tensor_ops.argmax_rows(self.compute_logits(hidden), excluded)


class ContiguousKVCache:
    """Reference attention backend for one sequence: K/V in one contiguous buffer per layer."""

    def __init__(self, config: ModelConfig, max_tokens: int):
        shape = (config.num_layers, max_tokens, config.num_kv_heads, config.head_dim)
        self.k = torch.zeros(shape)
        self.v = torch.zeros(shape)
        self.num_heads = config.num_heads
        self.length = 0  # tokens whose K/V are complete in every layer

    def attend(self, layer: int, qkv, cos, sin):
        q, k, v = tensor_ops.rope_qkv(qkv, cos, sin, self.num_heads, self.k.shape[2])
        start, end = self.length, self.length + q.shape[0]
        self.k[layer, start:end] = k
        self.v[layer, start:end] = v
        return tensor_ops.causal_attention(q, self.k[layer, :end], self.v[layer, :end], q_start=start)

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens


def _concat_rows(weights: list) -> torch.Tensor | QuantizedTensor:
    """Stack matrices along rows; quantized blocks stay quantized when the types agree."""
    if len(weights) == 1:
        return weights[0]
    if stacked_format(weights) in QUANT_TYPES:
        blocks = torch.cat([w.blocks for w in weights])
        return QuantizedTensor(weights[0].qtype, blocks, blocks.shape[0], weights[0].cols)
    return torch.cat([w.dequantize() if isinstance(w, QuantizedTensor) else w for w in weights])


def _dense(w) -> torch.Tensor:
    return w.dequantize() if isinstance(w, QuantizedTensor) else w.float()


LinearFactory = Callable[[object, str, torch.Tensor | None], Linear]


def build_model(loaded, weight_format: str = "fp32", linear_factory: LinearFactory = make_linear,
                ops: ModelOps = ModelOps()) -> LlamaModel:
    """Assemble a runnable model from loaded weights.

    weight_format: 'fp32' | 'bf16' dequantize; 'native' keeps GGUF blocks quantized.
    Q/K/V and gate/up are fused into one matmul each (fewer, larger GEMVs).
    """
    c, w = loaded.config, loaded.weights
    layers = []
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        stacked = {name: _concat_rows([w[f"{p}{part}.weight"] for part in parts])
                   for name, parts in LAYER_LINEARS.items()}
        qkv_bias = None
        if c.attention_bias:
            qkv_bias = torch.cat([w[f"{p}{part}.bias"].float() for part in LAYER_LINEARS["qkv"]])
        layers.append(LlamaLayer(
            input_norm=_dense(w[p + "input_layernorm.weight"]),
            qkv_proj=linear_factory(stacked["qkv"], weight_format, qkv_bias),
            o_proj=linear_factory(stacked["o"], weight_format, None),
            post_norm=_dense(w[p + "post_attention_layernorm.weight"]),
            gate_up_proj=linear_factory(stacked["gate_up"], weight_format, None),
            down_proj=linear_factory(stacked["down"], weight_format, None),
        ))
    return LlamaModel(c, _dense(w["model.embed_tokens.weight"]), layers, _dense(w["model.norm.weight"]),
                      linear_factory(lm_head_weight(w, c), weight_format, None), ops=ops, weight_format=weight_format)
