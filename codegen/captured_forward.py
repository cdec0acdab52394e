"""A forward pass over a few rows as a list of pre-bound kernel calls: small-batch decode without per-call Python.

At batch 1 a SmolLM2 token is ~270 kernel calls (9 a layer), each a few microseconds of work. Through the model's
Python (operators.llama.LlamaModel.forward and codegen.ops' wrappers) a call costs ~5-6 us more: output
allocation, alignment checks, kernel lookup, a DLPack conversion per torch argument; a kernel called with TVM
tensors made beforehand costs ~0.5 us. So, like a CUDA graph over static buffers, a `CapturedForward` owns every
activation of a forward pass of `tokens` rows over `seqs` sequences as one buffer each, with the TVM views of
them and of the weights and KV pool made once, and binds each layer's calls to them:

    add_rms_norm -> qkv GEMV -> rope_qkv (writes K/V) -> paged_attention -> o GEMV -> add_rms_norm
    -> gate_up GEMV -> silu_mul -> down GEMV -> (the next layer's) add_rms_norm

A step copies its inputs (embedding rows, RoPE tables, slots, block tables) into the buffers and runs the calls.
The kernels and their arguments are exactly those of the model's own forward, so the result is the same to the
bit. `capture` declines (None) what is not one TVM kernel per operator: torch linears or ops, a bias, the bf16
GEMM path, an int8 KV cache (torch quantizes its writes).
"""
from __future__ import annotations

import torch

from codegen import ops
from codegen.ops import DTYPE_NAMES, aligned, tvm_view
from codegen.quant_crossover import CAPTURED_MAX_TOKENS
from operators import tensor_ops
from operators.llama import LlamaModel


def _buffer(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return aligned(torch.zeros(*shape, dtype=dtype))


class CapturedForward:
    """LlamaModel.forward for the rows and sequences `capture` was given (ragged: any split of the rows over the
    sequences): the bound calls, and the input buffers a run copies its step into."""

    def __init__(self, model: LlamaModel, calls: list, inputs: dict[str, torch.Tensor], hidden: torch.Tensor):
        self.model = model
        self._calls = calls
        self._in = inputs
        self.hidden = hidden

    def run(self, token_ids: torch.Tensor, positions: torch.Tensor, slot_blocks: torch.Tensor,
            slot_offsets: torch.Tensor, block_tables: torch.Tensor, query_start: torch.Tensor,
            context_lens: torch.Tensor) -> torch.Tensor:
        """The final-normed hidden states [tokens, H]: this object's buffer, overwritten by the next run."""
        b = self._in
        torch.index_select(self.model.embed, 0, token_ids, out=b["x"])
        cos, sin = tensor_ops.rope_cos_sin(positions, self.model.inv_freq)
        b["cos"].copy_(cos)
        b["sin"].copy_(sin)
        b["slot_blocks"].copy_(slot_blocks)
        b["slot_offsets"].copy_(slot_offsets)
        b["block_tables"][:, :block_tables.shape[1]].copy_(block_tables)
        b["query_start"].copy_(query_start)
        b["context_lens"].copy_(context_lens)
        for kernel, args in self._calls:
            kernel(*args)
        return self.hidden


def capture(model: LlamaModel, kv_layers: list[tuple], block_size: int, tokens: int, seqs: int, max_blocks: int,
            target=None) -> CapturedForward | None:
    """The forward pass of `tokens` rows over `seqs` sequences, with block tables of up to `max_blocks` blocks a
    sequence, bound once; None where a step of this shape is not one TVM kernel per operator.
    kv_layers: each layer's (K, V) pool as kernel views (runtime.model_runner.PagedKVCache.kernel_layers)."""
    c = model.config
    kv_dtype = ops.dtype_name(kv_layers[0][0])
    if (tokens > CAPTURED_MAX_TOKENS or model.ops.name != "tvm" or model.activation_dtype != torch.float32
            or kv_dtype == "int8"):
        return None
    hidden, ffn, head_dim = c.hidden_size, c.intermediate_size, c.head_dim
    q_size, qkv_size = c.num_heads * head_dim, (c.num_heads + 2 * c.num_kv_heads) * head_dim
    b = {"x": _buffer(tokens, hidden), "h": _buffer(tokens, hidden), "qkv": _buffer(tokens, qkv_size),
         "q": _buffer(tokens, c.num_heads, head_dim), "attn": _buffer(tokens, c.num_heads, head_dim),
         "o": _buffer(tokens, hidden), "gate_up": _buffer(tokens, 2 * ffn), "act": _buffer(tokens, ffn),
         "down": _buffer(tokens, hidden), "cos": _buffer(tokens, head_dim), "sin": _buffer(tokens, head_dim),
         "slot_blocks": _buffer(tokens, dtype=torch.int32), "slot_offsets": _buffer(tokens, dtype=torch.int32),
         "block_tables": _buffer(seqs, max_blocks, dtype=torch.int32),
         "query_start": _buffer(seqs + 1, dtype=torch.int32), "context_lens": _buffer(seqs, dtype=torch.int32)}
    lanes = ops.attention_lanes(target)
    b["partials"] = ops.attention_partials(seqs, c.num_heads, c.num_kv_heads, head_dim, max_blocks, block_size, lanes)
    v = {name: tvm_view(t) for name, t in b.items()}
    v["attn_rows"] = tvm_view(b["attn"].view(tokens, q_size))
    # the two halves of gate_up are strided views for more than one row, which TVM tensors cannot be: those go
    # through DLPack on each call, as the model's own silu_mul passes them
    gate, up = b["gate_up"][:, :ffn], b["gate_up"][:, ffn:]
    gate, up = (tvm_view(gate), tvm_view(up)) if tokens == 1 else (gate, up)

    eps, f32 = c.rms_norm_eps, DTYPE_NAMES[torch.float32]
    add_rms_norm = ops.add_rms_norm_kernel(hidden, eps, f32, f32, target)
    silu_mul = ops.silu_mul_kernel(ffn, f32, target)
    rope_qkv = ops.rope_qkv_kernel(c.num_heads, c.num_kv_heads, head_dim, block_size, f32, kv_dtype, target)
    attention = ops.paged_attention_kernel(c.num_heads, c.num_kv_heads, head_dim, block_size, kv_dtype, target)

    # each layer's input norm is applied by the add_rms_norm that ends the layer before it (the final norm by the
    # last layer's)
    input_norms = [tvm_view(aligned(t)) for t in [layer.input_norm for layer in model.layers[1:]] + [model.final_norm]]
    calls = [(ops.rms_norm_kernel(hidden, eps, f32, target), (v["x"], tvm_view(aligned(model.layers[0].input_norm)),
                                                              v["h"]))]
    for layer, (k_cache, v_cache), next_norm in zip(model.layers, kv_layers, input_norms):
        calls += [
            _linear(layer.qkv_proj, tokens, v["h"], v["qkv"]),
            (rope_qkv, (v["qkv"], v["cos"], v["sin"], v["slot_blocks"], v["slot_offsets"], k_cache, v_cache, v["q"])),
            (attention, (v["q"], k_cache, v_cache, v["block_tables"], v["query_start"], v["context_lens"], v["attn"],
                         v["partials"], lanes)),
            _linear(layer.o_proj, tokens, v["attn_rows"], v["o"]),
            (add_rms_norm, (v["x"], v["o"], tvm_view(aligned(layer.post_norm)), v["h"])),
            _linear(layer.gate_up_proj, tokens, v["h"], v["gate_up"]),
            (silu_mul, (gate, up, v["act"])),
            _linear(layer.down_proj, tokens, v["act"], v["down"]),
            (add_rms_norm, (v["x"], v["down"], next_norm, v["h"])),
        ]
    if any(call is None for call in calls):
        return None
    inputs = {name: b[name] for name in ("x", "cos", "sin", "slot_blocks", "slot_offsets", "block_tables",
                                         "query_start", "context_lens")}
    return CapturedForward(model, calls, inputs, b["h"])


def _linear(linear, tokens: int, x, out) -> tuple | None:
    """The linear's one kernel call for `tokens` rows, or None (a torch linear, or not one kernel)."""
    kernel_call = getattr(linear, "kernel_call", None)
    return None if kernel_call is None else kernel_call(tokens, x, out)
