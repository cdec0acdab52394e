"""The model calls of a plan, run on the engine: all rows of an operator in one continuous batch.

generate: each row's prompt (through the chat template unless chat => false) becomes
a GenerationRequest. classify: each row becomes one ScoreRequest per label, all sharing
the prompt (chat template + instruction + text), so the prefix cache computes the
prompt once per row and the instruction once per query; the label with the highest
log-likelihood (label tokens + end of turn) wins. Never free text.

A model that a shared engine already runs (the server's, see SharedEngine) joins that
engine's batch instead of getting an engine of its own: its weights are loaded once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from codegen.kernel_set import kernel_set
from operators.engine_config import EngineConfig
from runtime.beam_search import beam_search, text_of
from runtime.engine import Engine
from runtime.engine_loop import Progress
from runtime.kv_tiers import KVTierSpec
from runtime.speculation import prompt_lookup_statistics
from operators.requests import GenerationRequest, GenerationResult, SamplingParams, ScoreRequest, ScoreResult

Request = GenerationRequest | ScoreRequest
Result = GenerationResult | ScoreResult


@dataclass(frozen=True)
class SharedEngine:
    """An engine that another part drives (the server's engine thread), open to SQL's model calls.

    run(requests, on_progress) blocks until every request has finished, beside whatever else the
    engine is running, and returns the results in request order; on_progress(done, total, tokens
    generated) may be called from the engine's thread.
    """

    model_path: str  # the model file it runs: a catalog model with the same file runs there
    knobs: EngineConfig  # fixed for as long as it runs: plans for its model obey them
    run: Callable[[list[Request], Progress | None], list[Result]]

    def runs(self, model_path: str) -> bool:
        return Path(model_path).expanduser().resolve() == Path(self.model_path).expanduser().resolve()


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
    shared_engine: bool = False  # ran beside other work, so `seconds` says little about this plan's cost
    num_speculative_steps: int = 0  # the engine's counters over this run: sequence steps that verified drafts,
    num_draft_tokens: int = 0  # the drafts verified,
    num_accepted_draft_tokens: int = 0
    # k -> (output tokens, decode steps, drafted, accepted) of prompt lookup replayed on the outputs
    prompt_lookup: dict = field(default_factory=dict)
    cache_tier_hits: dict = field(default_factory=dict)  # cached prompt tokens by tier: memory, host, disk
    replica_rows: list[int] = field(default_factory=list)  # requests each Ray replica ran (empty: this process's engine)
    replica_pids: list[int] = field(default_factory=list)  # the replicas' processes


def merged(a: LLMOutcome, b: LLMOutcome) -> LLMOutcome:
    """One outcome for two runs of the same model call (two partitions of its rows): lists joined, counts summed."""
    def add(x: dict, y: dict) -> dict:
        out = dict(x)
        for key, value in y.items():
            out[key] = tuple(map(sum, zip(out[key], value))) if isinstance(value, tuple) and key in out \
                else out.get(key, 0) + value
        return out
    width = max(len(a.replica_rows), len(b.replica_rows))
    return LLMOutcome(
        values=a.values + b.values, output_tokens=a.output_tokens + b.output_tokens, censored=a.censored + b.censored,
        num_requests=a.num_requests + b.num_requests, num_prompt_tokens=a.num_prompt_tokens + b.num_prompt_tokens,
        num_cached_prompt_tokens=a.num_cached_prompt_tokens + b.num_cached_prompt_tokens,
        num_computed_prompt_tokens=a.num_computed_prompt_tokens + b.num_computed_prompt_tokens,
        num_generated_tokens=a.num_generated_tokens + b.num_generated_tokens, seconds=a.seconds + b.seconds,
        load_seconds=a.load_seconds + b.load_seconds, shared_engine=a.shared_engine or b.shared_engine,
        num_speculative_steps=a.num_speculative_steps + b.num_speculative_steps,
        num_draft_tokens=a.num_draft_tokens + b.num_draft_tokens,
        num_accepted_draft_tokens=a.num_accepted_draft_tokens + b.num_accepted_draft_tokens,
        prompt_lookup=add(a.prompt_lookup, b.prompt_lookup), cache_tier_hits=add(a.cache_tier_hits, b.cache_tier_hits),
        replica_rows=[x + y for x, y in zip(a.replica_rows + [0] * (width - len(a.replica_rows)),
                                            b.replica_rows + [0] * (width - len(b.replica_rows)))],
        replica_pids=sorted(set(a.replica_pids) | set(b.replica_pids)))


def outcome_of(results: list[Result], seconds: float, shared_engine: bool) -> LLMOutcome:
    generations = [r for r in results if isinstance(r, GenerationResult)]
    prompt = sum(len(r.prompt_token_ids) for r in results)
    cached = sum(r.num_cached_prompt_tokens for r in results)
    return LLMOutcome(values=[], output_tokens=[len(r.output_token_ids) for r in generations],
                      censored=[r.finish_reason == "length" for r in generations], num_requests=len(results),
                      num_prompt_tokens=prompt, num_cached_prompt_tokens=cached,
                      num_computed_prompt_tokens=prompt - cached,
                      num_generated_tokens=sum(len(r.output_token_ids) for r in generations),
                      seconds=seconds, shared_engine=shared_engine, prompt_lookup=prompt_lookup_statistics(generations),
                      cache_tier_hits=tier_hits(results))


def tier_hits(results: list[Result]) -> dict[str, int]:
    total: dict[str, int] = {}
    for r in results:
        for tier, n in r.cache_tier_hits.items():
            total[tier] = total.get(tier, 0) + n
    return total


def classify_prompt(tokenizer, instruction: str, text: str) -> list[int]:
    """The instruction comes first so every row shares it as a cacheable prefix."""
    return tokenizer.encode_chat(f"{instruction}\n\n{text}")


def label_continuations(tokenizer, labels: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Each label as the assistant's whole answer: its tokens, then the end-of-turn token."""
    end = tuple(sorted(tokenizer.eos_token_ids)[:1])
    return [tuple(tokenizer.encode(label, add_special_tokens=False)) + end for label in labels]


def model_options(knobs: EngineConfig) -> dict[str, str]:
    """KernelSet.build_model's options the knobs set: prefill_dtype reaches only the native/tvm
    path's quantized linears (every other path computes as its weights say), so only there does it key a
    model of its own."""
    if knobs.weight_format == "native" and knobs.kernels == "tvm":
        return {"prefill_dtype": knobs.prefill_dtype}
    return {}


class LLMService:
    """Loads models and keeps one engine per (model, weight path and its options, knobs) for a connection;
    a model the shared engine runs goes there instead."""

    def __init__(self, load_model: Callable[[str], object], shared: SharedEngine | None = None,
                 kv_home: Path | None = None) -> None:
        """kv_home: the catalog's home, whose kv/ directory keeps prompt KV blocks for later processes."""
        self._load_model = load_model  # catalog model name -> catalog.loader.LoadedModel
        self.shared = shared
        self.kv_home = kv_home
        self._models: dict[tuple[str, str], object] = {}
        self._engines: dict[str, tuple[tuple, Engine]] = {}
        self._replicas: dict[str, tuple[EngineConfig, object]] = {}  # model -> (knobs, runtime.replicas.ReplicaSet)

    def loaded(self, model: str):
        return self._load_model(model)

    def shared_engine_for(self, model_path: str) -> SharedEngine | None:
        return self.shared if self.shared is not None and self.shared.runs(model_path) else None

    def engine(self, model: str, knobs: EngineConfig) -> Engine:
        loaded = self._load_model(model)
        options = model_options(knobs)
        key = (model, knobs.weight_format, knobs.kernels, tuple(sorted(options.items())))
        if key not in self._models:
            self._models[key] = kernel_set("cpu").build_model(loaded, kernels=knobs.kernels,
                                                              weight_format=knobs.weight_format, **options)
        cached = self._engines.get(model)
        if cached is not None and cached[0][0] == key and cached[0][1] != knobs:
            try:  # a plan that schedules or speculates differently keeps the engine and its prefix cache
                cached[1].reconfigure(knobs)
                cached = self._engines[model] = ((key, knobs), cached[1])
            except ValueError:
                pass
        if cached is None or cached[0] != (key, knobs):
            # new knobs need a new KV pool; with unchanged knobs the engine (and its prefix cache) carries over
            # to the next query of this connection, so a repeated query finds its prompts cached
            self._close(self._engines.pop(model, None))
            draft = None
            if knobs.speculative == "draft":  # the same weight path, so the draft reads weights as the target does
                draft = kernel_set("cpu").build_model(self._load_model(knobs.draft_model), kernels=knobs.kernels,
                                                      weight_format=knobs.weight_format, **options)
            tiers = None if self.kv_home is None else KVTierSpec(self.kv_home, model, str(loaded.path))
            cached = ((key, knobs), Engine(self._models[key], loaded.tokenizer, knobs, draft_model=draft, kv_tiers=tiers))
            self._engines[model] = cached
        return cached[1]

    def replica_set(self, model: str, knobs: EngineConfig):
        """knobs.replicas engine replicas on Ray for this model; kept while the knobs stay."""
        from runtime.replicas import EngineSpec, ReplicaSet

        cached = self._replicas.get(model)
        if cached is None or cached[0] != knobs:
            if cached is not None:
                cached[1].close()
            loaded = self._load_model(model)
            draft = str(self._load_model(knobs.draft_model).path) if knobs.speculative == "draft" else None
            tiers = None if self.kv_home is None else KVTierSpec(self.kv_home, model, str(loaded.path))
            spec = EngineSpec(str(loaded.path), model, knobs, model_options(knobs), draft, tiers)
            self._replicas[model] = cached = (knobs, ReplicaSet(spec, knobs.replicas))
        return cached[1]

    def close(self) -> None:
        for cached in self._engines.values():
            self._close(cached)
        for _, replicas in self._replicas.values():
            replicas.close()
        self._engines.clear()
        self._replicas.clear()
        self._models.clear()

    @staticmethod
    def _close(cached) -> None:
        """Blocks on their way to the disk tier land before the engine goes."""
        if cached is not None and cached[1].tiers is not None:
            cached[1].tiers.flush()

    def generate(self, model: str, knobs: EngineConfig, prompts: list[str], sampling: SamplingParams, chat: bool,
                 on_progress: Progress | None = None, priority: int = 0, n: int = 1) -> LLMOutcome:
        """values: one text per prompt, or with n > 1 a list of n texts per prompt (sample i seeded seed + i when
        the call has a seed, as OpenAI's n: the prompt's KV is computed once, the prefix cache shares it)."""
        tokenizer = self._load_model(model).tokenizer
        encode = tokenizer.encode_chat if chat else tokenizer.encode
        encoded = [tuple(encode(p)) for p in prompts]
        empty = next((p for p, ids in zip(prompts, encoded) if not ids), None)
        if empty is not None:  # the engine's own refusal could not say which prompt, nor why it has no tokens
            raise ValueError(f"generate(): the prompt {empty!r} has no tokens (chat => false adds no template): "
                             "give it some text, or NULL for no model call")
        if sampling.beam_width > 1:
            return self._beam_search(model, knobs, encoded, sampling, priority, n)
        samplings = [sampling if sampling.seed is None or n == 1 else replace(sampling, seed=sampling.seed + i)
                     for i in range(n)]
        requests = [GenerationRequest(ids, s, priority) for ids in encoded for s in samplings]
        results, outcome = self._run(model, knobs, requests, on_progress, n)
        texts = [r.text for r in results]
        outcome.values = texts if n == 1 else [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
        return outcome

    def _beam_search(self, model: str, knobs: EngineConfig, prompts: list[tuple[int, ...]], sampling: SamplingParams,
                     priority: int, n: int) -> LLMOutcome:
        """The best beam of each prompt (the n best with n > 1), through this connection's engine or the shared one."""
        tokenizer = self._load_model(model).tokenizer
        t_load = time.perf_counter()
        shared = self.shared_engine_for(str(self._load_model(model).path))
        run = (lambda requests: shared.run(requests, None)) if shared is not None else self.engine(model, knobs).generate
        t0 = time.perf_counter()
        found = beam_search(run, prompts, max(sampling.beam_width, n), sampling.max_tokens, tokenizer.eos_token_ids,
                            sampling.length_penalty, priority)
        best = [beams[:n] for beams in found]
        texts = [[text_of(b, tokenizer) for b in beams] for beams in best]
        generated = sum(len(beams[0].tokens) for beams in best)
        return LLMOutcome(values=[t[0] for t in texts] if n == 1 else texts,
                          output_tokens=[len(beams[0].tokens) for beams in best],
                          censored=[not beams[0].finished for beams in best], num_requests=len(prompts),
                          num_prompt_tokens=sum(len(p) for p in prompts), num_computed_prompt_tokens=sum(map(len, prompts)),
                          num_generated_tokens=generated, seconds=time.perf_counter() - t0, load_seconds=t0 - t_load,
                          shared_engine=shared is not None)

    def classify(self, model: str, knobs: EngineConfig, texts: list[str], labels: tuple[str, ...], instruction: str,
                 on_progress: Progress | None = None, priority: int = 0) -> LLMOutcome:
        tokenizer = self._load_model(model).tokenizer
        continuations = label_continuations(tokenizer, labels)
        requests = []
        for text in texts:
            prompt = tuple(classify_prompt(tokenizer, instruction, text))
            requests += [ScoreRequest(prompt, c, priority) for c in continuations]
        per_row = len(labels)
        results, outcome = self._run(model, knobs, requests, on_progress, per_row)
        values = []
        for i in range(len(texts)):
            scores = [r.logprob for r in results[i * per_row:(i + 1) * per_row]]
            values.append(labels[max(range(per_row), key=scores.__getitem__)])
        outcome.values = values
        return outcome

    def _run(self, model: str, knobs: EngineConfig, requests: list[Request], on_progress: Progress | None,
             per_row: int = 1) -> tuple[list[Result], LLMOutcome]:
        """The requests through the shared engine when it runs this model, else through this connection's own."""
        t_load = time.perf_counter()
        shared = self.shared_engine_for(str(self._load_model(model).path))
        rows = None if on_progress is None else (
            lambda done, total, tokens: on_progress(done // per_row, total // per_row, tokens))
        if shared is not None:
            t0 = time.perf_counter()
            results = shared.run(requests, rows)
        elif knobs.replicas > 1:
            replicas = self.replica_set(model, knobs)
            t0 = time.perf_counter()
            run = replicas.run(requests, on_progress=rows)  # a range's requests at a time
            results = run.results
            outcome = outcome_of(results, time.perf_counter() - t0, False)
            outcome.load_seconds, outcome.replica_rows, outcome.replica_pids = t0 - t_load, run.rows_per_replica, run.pids
            return results, outcome
        else:
            engine = self.engine(model, knobs)
            before, t0 = engine.stats, time.perf_counter()
            progress = None if rows is None else (
                lambda done, total: rows(done, total, engine.stats.num_generated_tokens - before.num_generated_tokens))
            results = engine.generate(requests, on_progress=progress)
        outcome = outcome_of(results, time.perf_counter() - t0, shared is not None)
        outcome.load_seconds = t0 - t_load
        if shared is None:
            after = engine.stats
            outcome.num_speculative_steps = after.num_speculative_steps - before.num_speculative_steps
            outcome.num_draft_tokens = after.num_draft_tokens - before.num_draft_tokens
            outcome.num_accepted_draft_tokens = after.num_accepted_draft_tokens - before.num_accepted_draft_tokens
        return results, outcome
