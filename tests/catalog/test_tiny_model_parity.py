"""A tiny random Llama saved as GGUF and as an HF directory loads through both paths with transformers' logits."""
import pytest
import torch

from catalog.loader import load_model
from operators.llama import ContiguousKVCache, build_model

PROMPT_IDS = [5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 200, 31]


def sqlm_logits(loaded, ids, weight_format="fp32"):
    model = build_model(loaded, weight_format)
    cache = ContiguousKVCache(loaded.config, len(ids))
    with torch.inference_mode():
        hidden = model.forward(torch.tensor(ids), torch.arange(len(ids)), cache)
        return model.compute_logits(hidden)  # [T, V]


@pytest.fixture(scope="module")
def hf_logits(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([PROMPT_IDS])).logits[0]


@pytest.mark.parametrize("which", ["gguf_path", "hf_dir"])
def test_logits_match_transformers(tiny_llama, hf_logits, which):
    loaded = load_model(getattr(tiny_llama, which))
    diff = (sqlm_logits(loaded, PROMPT_IDS) - hf_logits).abs().max().item()
    assert diff < 1e-4, f"max |logit diff| {diff} via {which}"


def test_gguf_keeps_quantized_blocks(tiny_llama):
    from catalog.quant import QuantizedTensor

    loaded = load_model(tiny_llama.gguf_path)
    qtypes = {w.qtype for w in loaded.weights.values() if isinstance(w, QuantizedTensor)}
    assert qtypes == {"Q4_0", "Q4_1", "Q8_0"}
    assert loaded.weight_formats == ("native", "fp32", "bf16")


def test_native_quantized_path_equals_dequantized(tiny_llama, hf_logits):
    loaded = load_model(tiny_llama.gguf_path)
    native = sqlm_logits(loaded, PROMPT_IDS, "native")
    assert (native - hf_logits).abs().max().item() < 1e-4


def test_gguf_tokenizer_matches_hf_dir_tokenizer(tiny_llama):
    text = "the lazy fox héllo 你好 🙂 jumps"
    a = load_model(tiny_llama.gguf_path).tokenizer
    b = load_model(tiny_llama.hf_dir).tokenizer
    assert a.encode(text) == b.encode(text)
    assert a.decode(a.encode(text)) == text
    assert a.apply_chat_template([{"role": "user", "content": "hi"}]) == b.apply_chat_template([{"role": "user", "content": "hi"}])
