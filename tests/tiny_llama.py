"""A tiny random Llama model written in the real formats: an HF safetensors directory and a GGUF file.

Both hold the same weights (quantized GGUF tensors are dequantized for the HF copy), so a
loader that reads either correctly gives transformers' logits.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROPE_THETA = 10000.0
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class TinyLlamaFiles:
    hf_dir: Path
    gguf_path: Path
    vocab_size: int


def _byte_level_vocab(corpus: str, num_merges: int):
    """Byte-level BPE trained on a small corpus with `tokenizers` itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + len(SPECIALS) + num_merges, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([corpus], trainer)
    return tok


def write_tiny_llama(root: Path, *, quantize: bool = True, seed: int = 0, layers: int = 2) -> TinyLlamaFiles:
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    corpus = "the quick brown fox jumps over the lazy dog. " * 20 + "héllo wörld 你好 🙂 " * 5
    tok = _byte_level_vocab(corpus, num_merges=40)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                         rope_theta=ROPE_THETA, max_position_embeddings=256, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))

    gguf_path = root / "tiny.gguf"
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    state = _write_gguf(gguf_path, config, state, tokens, merges, quantize)

    hf_dir = root / "hf"
    with torch.no_grad():
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.save_pretrained(hf_dir, safe_serialization=True)
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "bos_token": SPECIALS[1], "eos_token": SPECIALS[2], "add_bos_token": False}))
    return TinyLlamaFiles(hf_dir, gguf_path, len(tokens))


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter layout for Q/K rows (interleaved rotary halves)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path: Path, config, state: dict, tokens, merges, quantize: bool) -> dict:
    """Write the GGUF; returns the state dict as stored (after quantization round trips)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                 "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                 "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight"}
    # One of each storage type the loader must read.
    qtypes = {"attn_q.weight": Q.Q4_1, "attn_k.weight": Q.Q4_0, "attn_v.weight": Q.Q8_0, "ffn_gate.weight": Q.Q4_1,
              "ffn_up.weight": Q.Q4_1, "ffn_down.weight": Q.Q8_0, "token_embd.weight": Q.Q8_0, "attn_output.weight": Q.F16,
              "output.weight": Q.BF16}
    stored = {}
    for hf, arr in state.items():
        if hf.startswith("model.layers."):
            _, _, i, rest = hf.split(".", 3)
            name = f"blk.{i}.{per_layer[rest]}"
            short = per_layer[rest]
        else:
            name = short = names[hf]
        qtype = qtypes.get(short, Q.F32) if quantize else Q.F32
        data = arr
        if short == "attn_q.weight":
            data = _permute(arr, config.num_attention_heads)
        elif short == "attn_k.weight":
            data = _permute(arr, config.num_key_value_heads)
        if qtype == Q.F32:
            w.add_tensor(name, data.astype(np.float32))
            back = data.astype(np.float32)
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
            back = data.astype(np.float16).astype(np.float32)
        else:
            raw = gguf.quants.quantize(data.astype(np.float32), qtype)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
            back = gguf.quants.dequantize(raw, qtype).reshape(data.shape).astype(np.float32)
        if short == "attn_q.weight":
            back = _unpermute(back, config.num_attention_heads)
        elif short == "attn_k.weight":
            back = _unpermute(back, config.num_key_value_heads)
        stored[hf] = back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
