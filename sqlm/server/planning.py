"""Each generation request as a plan (planner/request.py) on the server's engine, and the lengths
its outputs came to, fed back into the statistics the next plans read.

The optimizer context is built once, at startup: the hardware profile, the learned cost
corrections and the model's facts do not change while serving, and the engine's knobs are
fixed (facts a plan obeys, not choices). Output lengths are kept in memory and written to
the catalog every FLUSH_SECONDS, off the event loop: a request never waits on SQLite.

    planner = RequestPlanner.for_engine(catalog, settings, facts, knobs, predictor)
    plan = planner.plan(prompts, sampling, chat=True)   # a PhysicalPlan: knobs, estimates, choices
    planner.record(plan, results)                       # when the request has ended
    planner.flush()                                     # now and then, on a worker thread

Every finished request also teaches the per-request length predictor (planner/length_predictor.py),
persisted with the catalog, so a restarted server predicts from what the last one saw.
"""
from __future__ import annotations

import logging
from dataclasses import replace
import threading
from collections import Counter

from catalog.settings import Settings
from operators import physical as P
from operators.engine_config import EngineConfig
from planner.context import ModelFacts, OptimizerContext, catalog_context
from planner.length_predictor import LengthPredictor
from planner.lower import PhysicalPlan
from planner.request import plan_request
from planner.statistics import Statistics
from operators.requests import GenerationResult, SamplingParams

log = logging.getLogger("sqlm.server")

FLUSH_SECONDS = 10.0


class OutputLengths:
    """The catalog's output-length histograms with this server's observations on top
    (a planner.statistics.StatsStore); each (model, template) is read from the catalog once."""

    def __init__(self, catalog) -> None:
        self.catalog = catalog  # catalog.store.Catalog
        self._lock = threading.Lock()  # record() on the event loop, flush() on a worker thread
        self._counts: dict[tuple[str, str], Counter] = {}  # (model, template) -> {(length, censored): count}
        self._pending: dict[tuple[str, str], list[tuple[int, bool]]] = {}  # not yet in the catalog

    def _histogram(self, model: str, template: str) -> Counter:
        key = (model.lower(), template)
        counts = self._counts.get(key)
        if counts is None:
            stored = self.catalog.output_length_histogram(model, template)
            with self._lock:
                counts = self._counts.setdefault(key, Counter({(n, c): k for n, c, k in stored}))
        return counts

    def output_length_histogram(self, model: str, template: str) -> list[tuple[int, bool, int]]:
        counts = self._histogram(model, template)
        with self._lock:
            return [(n, censored, k) for (n, censored), k in counts.items()]

    def record(self, model: str, template: str, lengths: list[tuple[int, bool]]) -> None:
        counts = self._histogram(model, template)
        with self._lock:
            counts.update(lengths)
            self._pending.setdefault((model.lower(), template), []).extend(lengths)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for (model, template), lengths in pending.items():
            self.catalog.record_output_lengths(model, template, lengths)

    def speculation_stats(self, model: str, template: str, method: str) -> dict[int, tuple[int, int, int, int]]:
        return self.catalog.speculation_stats(model, template, method)

    # column statistics: an online request brings its own (planner/request.py); files are the catalog's
    def column_stats(self, source: str) -> dict[str, dict]:
        return self.catalog.column_stats(source)

    def put_column_stats(self, source: str, stats: dict[str, dict]) -> None:
        self.catalog.put_column_stats(source, stats)


def learned_predictor(catalog, model: str) -> LengthPredictor:
    """The length predictor with the catalog's latest examples of `model` (what earlier servers saw)."""
    predictor = LengthPredictor()
    for prompt, length in catalog.length_examples(model, predictor.capacity):
        predictor.record(prompt, length)
    return predictor


class RequestPlanner:
    def __init__(self, ctx: OptimizerContext, lengths: OutputLengths, model: str, predictor: LengthPredictor,
                 catalog=None) -> None:
        self.ctx, self.lengths, self.model, self.predictor, self.catalog = ctx, lengths, model, predictor, catalog
        self._examples: list[tuple[tuple[int, ...], int]] = []  # not yet in the catalog
        self._lock = threading.Lock()

    @staticmethod
    def for_engine(catalog, settings: Settings, facts: ModelFacts, knobs: EngineConfig,
                   predictor: LengthPredictor) -> RequestPlanner:
        """catalog: a catalog.store.Catalog kept open while serving; knobs: the running engine's."""
        lengths = OutputLengths(catalog)
        ctx = catalog_context(catalog, settings, {facts.name: facts}, Statistics(lengths), {facts.name: knobs})
        ctx = replace(ctx, online=True, length_spread=predictor.spread())
        return RequestPlanner(ctx, lengths, facts.name, predictor, catalog)

    def plan(self, prompts: list[tuple[int, ...]], sampling: SamplingParams, chat: bool) -> PhysicalPlan:
        guesses = [self.predictor.predict(p, sampling.max_tokens) for p in prompts]
        predicted = None
        if len(self.predictor) and not guesses[0][1].startswith("max_tokens"):
            predicted = (sum(g for g, _ in guesses) / len(guesses), f"predicted from {guesses[0][1]}")
        return plan_request(self.model, prompts, sampling, chat, self.ctx, predicted)

    def record(self, plan: PhysicalPlan, results: list[GenerationResult]) -> None:
        """Output lengths of the choices that ran to their end (cancelled ones say nothing about length)."""
        done = [r for r in results if r.finish_reason in ("stop", "length")]
        if not done:
            return
        op: P.BatchedGenerate = plan.plan.op(plan.llm_nodes()[0])
        self.lengths.record(op.model, op.template, [(len(r.output_token_ids), r.finish_reason == "length")
                                                    for r in done])
        for r in done:
            self.predictor.record(r.prompt_token_ids, len(r.output_token_ids))
        with self._lock:
            self._examples += [(tuple(r.prompt_token_ids), len(r.output_token_ids)) for r in done]

    def flush(self) -> None:
        with self._lock:
            examples, self._examples = self._examples, []
        try:
            self.lengths.flush()
            if examples and self.catalog is not None:
                self.catalog.record_length_examples(self.model, examples)
        except Exception:  # the catalog is busy or gone: the next flush tries again with newer figures only
            log.exception("writing output-length statistics to the catalog failed")
