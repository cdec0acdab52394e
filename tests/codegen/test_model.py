"""End to end: a model built on TVM kernels generates the torch path's greedy tokens."""
import pytest
import torch

from catalog.loader import load_model
from codegen.attention import TvmSequenceKVCache
from codegen.model_kernels import build_model
from operators.llama import ContiguousKVCache
from operators.llama import build_model as build_torch_model


@torch.inference_mode()
def greedy(model, cache, prompt_ids, num_tokens):
    tokens, next_ids = [], list(prompt_ids)
    for _ in range(num_tokens):
        hidden = model.forward(torch.tensor(next_ids), torch.arange(cache.length, cache.length + len(next_ids)), cache)
        cache.advance(len(next_ids))
        token = int(model.compute_logits(hidden[-1:])[0].argmax())
        tokens.append(token)
        next_ids = [token]
    return tokens


@pytest.mark.parametrize("weight_format", ["native", "fp32"])
def test_tiny_model_logits_and_tokens_match_torch(tiny_llama, weight_format):
    loaded = load_model(tiny_llama.gguf_path)
    ours = build_model(loaded, kernels="tvm", weight_format=weight_format)
    theirs = build_torch_model(loaded, weight_format)
    prompt = [5, 17, 42, 99, 3, 250, 7, 64]
    with torch.inference_mode():
        a = ours.forward(torch.tensor(prompt), torch.arange(8), TvmSequenceKVCache(loaded.config, 16))
        b = theirs.forward(torch.tensor(prompt), torch.arange(8), ContiguousKVCache(loaded.config, 16))
        torch.testing.assert_close(ours.compute_logits(a), theirs.compute_logits(b), rtol=1e-4, atol=1e-4)
    assert greedy(ours, TvmSequenceKVCache(loaded.config, 32), prompt, 12) == \
        greedy(theirs, ContiguousKVCache(loaded.config, 32), prompt, 12)


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_smollm2_q4_1_native_matches_dequantize_then_reference(smollm2, smollm2_fp32, prompt):
    ids = smollm2.tokenizer.encode_chat(prompt)
    ours = build_model(smollm2, kernels="tvm", weight_format="native")
    assert greedy(ours, TvmSequenceKVCache(smollm2.config, 128), ids, 16) == \
        greedy(smollm2_fp32, ContiguousKVCache(smollm2.config, 128), ids, 16)
