"""The reference loop's stop conditions, sampling reproducibility and context errors (tiny model: fast)."""
import pytest
import torch

from catalog.loader import load_model
from operators.llama import build_model
from runtime.errors import PromptTooLongError
from runtime.generate import generate
from operators.requests import GenerationRequest, SamplingParams
from runtime.sampler import sample_one


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    loaded = load_model(tiny_llama.hf_dir)
    return build_model(loaded, "fp32"), loaded.tokenizer


def run(tiny, prompt_ids, **params):
    model, tok = tiny
    return generate(model, tok, GenerationRequest(tuple(prompt_ids), SamplingParams(**params)))


def test_max_tokens_bounds_output(tiny):
    result = run(tiny, [5, 6, 7], max_tokens=9, ignore_eos=True)
    assert len(result.output_token_ids) == 9 and result.finish_reason == "length"


def test_same_seed_same_tokens_other_seed_differs(tiny):
    a = run(tiny, [5, 6, 7], max_tokens=20, temperature=1.5, seed=1, ignore_eos=True)
    b = run(tiny, [5, 6, 7], max_tokens=20, temperature=1.5, seed=1, ignore_eos=True)
    c = run(tiny, [5, 6, 7], max_tokens=20, temperature=1.5, seed=2, ignore_eos=True)
    assert a.output_token_ids == b.output_token_ids
    assert a.output_token_ids != c.output_token_ids


def test_stop_string_truncates_text(tiny):
    full = run(tiny, [5, 6, 7], max_tokens=24, ignore_eos=True)
    stop = full.text[5:8]
    assert stop and stop in full.text
    cut = run(tiny, [5, 6, 7], max_tokens=24, ignore_eos=True, stop=(stop,))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


def test_prompt_longer_than_context_is_a_clear_error(tiny):
    with pytest.raises(PromptTooLongError, match="context window is 256 tokens"):
        run(tiny, [5] * 300, max_tokens=4)


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(50)
    best = int(torch.argmax(logits))
    g = torch.Generator().manual_seed(0)
    assert sample_one(logits, SamplingParams(temperature=1.0, top_k=1), g) == best
    assert sample_one(logits, SamplingParams(temperature=1.0, top_p=1e-6), g) == best


@pytest.mark.parametrize("bad", [dict(max_tokens=-1), dict(temperature=-0.5), dict(top_p=0.0), dict(top_k=-2)])
def test_bad_sampling_params_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)
