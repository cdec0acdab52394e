"""Constrained decoding: whatever the model would say, the text follows its constraint (tiny random model)."""
from __future__ import annotations

import json
import re

import pytest

from operators.engine_config import EngineConfig
from operators.requests import GenerationRequest, SamplingParams, StructuredOutput
from runtime.engine import Engine
from runtime.structured import StructuredOutputError, check

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "role"],
          "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer", "minimum": 0,
                                                                             "maximum": 120},
                         "role": {"enum": ["admin", "user"]}}}


def generate(tiny, structured: StructuredOutput, seeds=range(6), max_tokens: int = 48) -> list:
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=16 << 20))
    requests = [GenerationRequest((5 + seed, 6, 7), SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed,
                                                                   structured=structured)) for seed in seeds]
    return engine.generate(requests)


def valid_person(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"name", "age", "role"} and isinstance(value["name"], str)
            and len(value["name"]) <= 6 and isinstance(value["age"], int) and 0 <= value["age"] <= 120
            and value["role"] in ("admin", "user"))


def test_sampled_outputs_follow_a_json_schema(tiny):
    results = generate(tiny, StructuredOutput("json_schema", json.dumps(PERSON)), max_tokens=64)
    finished = [r for r in results if r.finish_reason == "stop"]
    assert finished, "no output completed its JSON within max_tokens"
    assert all(valid_person(json.loads(r.text)) for r in finished)


@pytest.mark.parametrize("kind,spec,ok", [
    ("regex", "[ab]{2}-[0-9]{3}", lambda t: re.fullmatch("[ab]{2}-[0-9]{3}", t)),
    ("choice", json.dumps(["red", "green", "blue"]), lambda t: t in ("red", "green", "blue")),
    ("json_object", "", lambda t: isinstance(json.loads(t), dict)),
])
def test_regex_choice_and_json_object(tiny, kind, spec, ok):
    results = generate(tiny, StructuredOutput(kind, spec), max_tokens=40)
    finished = [r for r in results if r.finish_reason == "stop"]
    assert len(finished) >= (len(results) if kind != "json_object" else 1)
    assert all(ok(r.text) for r in finished)


@pytest.mark.parametrize("kind,spec,says", [
    ("regex", "(", "unclosed group"), ("json_schema", "{nope", "not valid JSON"), ("choice", "[]", "non-empty list"),
])
def test_an_invalid_constraint_is_an_error_naming_it(kind, spec, says):
    with pytest.raises(StructuredOutputError, match=says):
        check(StructuredOutput(kind, spec))


def test_penalties_and_bias_follow_vllms_rules():
    """The logits processors on a hand-made row: presence / frequency count output tokens, repetition also
    the prompt's, logit_bias adds."""
    import torch

    from runtime.logits_processors import process

    class Seq:
        constraint = None

        def __init__(self, sampling):
            self.request = GenerationRequest((1, 2), sampling)
            self.token_ids = [1, 2, 3, 3]  # prompt 1, 2; output 3, 3
            self.output_token_ids = [3, 3]

    row = torch.tensor([[1.0, 2.0, -2.0, 4.0, 0.5]])
    assert process(row, [Seq(SamplingParams())]) is row  # nothing asked: no copy
    got = process(row, [Seq(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))])[0].tolist()
    assert got == [1.0, 2.0, -2.0, 4.0 - 0.5 - 2 * 0.25, 0.5]
    got = process(row, [Seq(SamplingParams(repetition_penalty=2.0))])[0].tolist()
    assert got == [1.0, 1.0, -4.0, 2.0, 0.5]  # tokens 1, 2 (prompt) and 3 (output)
    got = process(row, [Seq(SamplingParams(logit_bias=((4, 10.0), (0, -100.0))))])[0].tolist()
    assert got == [-99.0, 2.0, -2.0, 4.0, 10.5]
    assert row.tolist() == [[1.0, 2.0, -2.0, 4.0, 0.5]]  # the model's logits are left alone


def test_min_p_keeps_only_tokens_near_the_best():
    import torch

    from runtime.sampler import sample_one

    logits = torch.tensor([5.0, 4.9, 0.0, -1.0])
    drawn = {sample_one(logits, SamplingParams(temperature=1.0, min_p=0.5), torch.Generator().manual_seed(s))
             for s in range(200)}
    assert drawn == {0, 1}


def test_a_logit_bias_steers_greedy_decoding(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=16 << 20))
    [result] = engine.generate([GenerationRequest((5, 6, 7), SamplingParams(max_tokens=3, ignore_eos=True,
                                                                            logit_bias=((42, 100.0),)))])
    assert list(result.output_token_ids) == [42, 42, 42]
