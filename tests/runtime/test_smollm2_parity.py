"""sqlm's greedy output on the real default model equals HF transformers' token for token."""
import pytest
import torch

from runtime.generate import generate
from operators.requests import GenerationRequest, SamplingParams

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for writing clean Python code.",
    "Explain what a database index is in one paragraph.",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def hf_model():
    import functools

    import gguf
    from transformers import AutoModelForCausalLM

    from catalog.registry import default_model_path

    path = default_model_path()
    # transformers' GGUF loader parses the file twice (config, then weights) and rebuilds the same tensor-name
    # map once per tensor (397 times): both pure functions of their arguments, so each is done once here
    # (the reference's weights and code are unchanged; its load drops from ~17 s to a few)
    read = gguf.GGUFReader
    readers: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
        mp.setattr(gguf, "GGUFReader", lambda p, *a, **k: readers.get(str(p)) or readers.setdefault(str(p), read(p, *a, **k)))
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokens(smollm2, hf_model) -> dict[str, list[int]]:
    """HF's greedy continuation of every prompt, from one left-padded batch (HF's batched outputs equal its
    batch-1 outputs token for token: shared/notes/machine.md)."""
    prompts = [smollm2.tokenizer.encode_chat(p) for p in CHAT_PROMPTS]
    width = max(len(ids) for ids in prompts)
    pad = 2
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    with torch.inference_mode():
        out = hf_model.generate(input_ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad)
    return {p: out[i, width:].tolist() for i, p in enumerate(CHAT_PROMPTS)}


@pytest.mark.parametrize("prompt", CHAT_PROMPTS)
def test_greedy_tokens_equal_transformers(smollm2, smollm2_fp32, hf_tokens, prompt):
    ids = smollm2.tokenizer.encode_chat(prompt)
    ours = generate(smollm2_fp32, smollm2.tokenizer,
                    GenerationRequest(tuple(ids), SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)))
    assert ours.output_token_ids == hf_tokens[prompt]


def test_default_answer_is_paris(smollm2, smollm2_fp32):
    ids = smollm2.tokenizer.encode_chat("What is the capital of France?")
    result = generate(smollm2_fp32, smollm2.tokenizer, GenerationRequest(tuple(ids), SamplingParams(max_tokens=16)))
    assert result.text == "The capital of France is Paris."
    assert result.finish_reason == "stop"


def test_the_default_plans_batched_engine_equals_transformers(smollm2, hf_tokens):
    """The engine on the default plan's kernels (Q4_1 kept quantized on TVM), all prompts in one batch: its greedy
    rows take the lm_head's argmax through the greedy screen (codegen/greedy_screen.py). A request that asks for
    logprobs reads every logit instead: the same tokens."""
    from codegen.kernel_set import kernel_set
    from operators.engine_config import EngineConfig
    from runtime.engine import Engine

    model = kernel_set("cpu").build_model(smollm2, kernels="tvm", weight_format="native")
    engine = Engine(model, smollm2.tokenizer, EngineConfig(kv_cache_memory=64 << 20))
    plain = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    results = engine.generate([engine.request_from_text(p, plain) for p in CHAT_PROMPTS])
    assert [r.output_token_ids for r in results] == [hf_tokens[p] for p in CHAT_PROMPTS]
    assert model.lm_head._screen is not None  # the screen took them
    with_logprobs = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1)
    (result,) = engine.generate([engine.request_from_text(CHAT_PROMPTS[1], with_logprobs)])
    assert result.output_token_ids == hf_tokens[CHAT_PROMPTS[1]]
