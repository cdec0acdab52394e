"""The model calls of a plan, run on the engine: all rows of an operator in one continuous batch.

generate: each row's prompt (through the chat template unless chat => false) becomes
a GenerationRequest. classify: each row becomes one ScoreRequest per label, all sharing
the prompt (chat template + instruction + text), so the prefix cache computes the
prompt once per row and the instruction once per query; the label with the highest
log-likelihood (label tokens + end of turn) wins. Never free text.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from codegen.model_kernels import build_model
from operators.physical import EngineKnobs
from runtime.engine import Engine
from runtime.engine_config import EngineConfig
from runtime.requests import GenerationRequest, SamplingParams, ScoreRequest

Progress = Callable[[int, int, int], None]  # (rows done, rows total, tokens generated so far)


@dataclass
class LLMOutcome:
    values: list[str | None]  # one per input text, in input order
    output_tokens: list[int] = field(default_factory=list)  # generated tokens per request (generate only)
    censored: list[bool] = field(default_factory=list)  # cut short by max_tokens
    num_requests: int = 0
    num_prompt_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    num_computed_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    seconds: float = 0.0  # in the engine
    load_seconds: float = 0.0  # loading weights and building the engine (once per connection and knobs)


def classify_prompt(tokenizer, instruction: str, text: str) -> list[int]:
    """The instruction comes first so every row shares it as a cacheable prefix."""
    return tokenizer.encode_chat(f"{instruction}\n\n{text}")


def label_continuations(tokenizer, labels: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Each label as the assistant's whole answer: its tokens, then the end-of-turn token."""
    end = tuple(sorted(tokenizer.eos_token_ids)[:1])
    return [tuple(tokenizer.encode(label, add_special_tokens=False)) + end for label in labels]


class LLMService:
    """Loads models and keeps one engine per (model, weight format, knobs) for a connection."""

    def __init__(self, load_model: Callable[[str], object]) -> None:
        self._load_model = load_model  # catalog model name -> catalog.loader.LoadedModel
        self._models: dict[tuple[str, str], object] = {}
        self._engines: dict[str, tuple[tuple, Engine]] = {}

    def loaded(self, model: str):
        return self._load_model(model)

    def engine(self, model: str, knobs: EngineKnobs) -> Engine:
        loaded = self._load_model(model)
        key = (model, knobs.weight_format, knobs.kernels)
        if key not in self._models:
            self._models[key] = build_model(loaded, kernels=knobs.kernels, weight_format=knobs.weight_format)
        config = EngineConfig(kv_cache_memory=knobs.kv_cache_memory, kv_block_size=knobs.kv_block_size,
                              max_batch_size=knobs.max_batch_size, prefill_chunk_tokens=knobs.prefill_chunk_tokens,
                              prefix_cache=knobs.prefix_cache, scheduling=knobs.scheduling)
        cached = self._engines.get(model)
        if cached is None or cached[0] != (knobs.weight_format, knobs.kernels, config):
            # new knobs need a new KV pool; with unchanged knobs the engine (and its prefix cache) carries over
            # to the next query of this connection, so a repeated query finds its prompts cached
            self._engines.pop(model, None)
            cached = ((knobs.weight_format, knobs.kernels, config), Engine(self._models[key], loaded.tokenizer, config))
            self._engines[model] = cached
        return cached[1]

    def close(self) -> None:
        self._engines.clear()
        self._models.clear()

    def generate(self, model: str, knobs: EngineKnobs, prompts: list[str], sampling: SamplingParams, chat: bool,
                 on_progress: Progress | None = None) -> LLMOutcome:
        t_load = time.perf_counter()
        tokenizer = self._load_model(model).tokenizer
        encode = tokenizer.encode_chat if chat else tokenizer.encode
        requests = [GenerationRequest(tuple(encode(p)), sampling) for p in prompts]
        t_load = time.perf_counter()
        engine = self.engine(model, knobs)
        before, t0 = engine.stats, time.perf_counter()
        results = engine.generate(requests, on_progress=self._progress(engine, before, on_progress))
        outcome = self._outcome(engine, before, time.perf_counter() - t0, len(requests))
        outcome.load_seconds = t0 - t_load
        outcome.values = [r.text for r in results]
        outcome.output_tokens = [len(r.output_token_ids) for r in results]
        outcome.censored = [r.finish_reason == "length" for r in results]
        return outcome

    def classify(self, model: str, knobs: EngineKnobs, texts: list[str], labels: tuple[str, ...], instruction: str,
                 on_progress: Progress | None = None) -> LLMOutcome:
        t_load = time.perf_counter()
        tokenizer = self._load_model(model).tokenizer
        continuations = label_continuations(tokenizer, labels)
        requests = []
        for text in texts:
            prompt = tuple(classify_prompt(tokenizer, instruction, text))
            requests += [ScoreRequest(prompt, c) for c in continuations]
        engine = self.engine(model, knobs)
        before, t0 = engine.stats, time.perf_counter()
        per_row = len(labels)
        progress = self._progress(engine, before, on_progress, per_row)
        results = engine.generate(requests, on_progress=progress)
        outcome = self._outcome(engine, before, time.perf_counter() - t0, len(requests))
        outcome.load_seconds = t0 - t_load
        values = []
        for i in range(len(texts)):
            scores = [r.logprob for r in results[i * per_row:(i + 1) * per_row]]
            values.append(labels[max(range(per_row), key=scores.__getitem__)])
        outcome.values = values
        return outcome

    @staticmethod
    def _progress(engine: Engine, before, on_progress: Progress | None, per_row: int = 1):
        if on_progress is None:
            return None
        return lambda done, total: on_progress(done // per_row, total // per_row,
                                               engine.stats.num_generated_tokens - before.num_generated_tokens)

    @staticmethod
    def _outcome(engine: Engine, before, seconds: float, num_requests: int) -> LLMOutcome:
        after = engine.stats
        return LLMOutcome(
            values=[], num_requests=num_requests,
            num_prompt_tokens=after.num_prompt_tokens - before.num_prompt_tokens,
            num_cached_prompt_tokens=after.num_cached_prompt_tokens - before.num_cached_prompt_tokens,
            num_computed_prompt_tokens=after.num_computed_prompt_tokens - before.num_computed_prompt_tokens,
            num_generated_tokens=after.num_generated_tokens - before.num_generated_tokens,
            seconds=seconds,
        )
