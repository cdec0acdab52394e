"""Each generation request as a plan (planner/request.py) on the server's engine, and the lengths
its outputs came to, fed back into the statistics the next plans read.

The optimizer context is built once, at startup: the hardware profile, the learned cost
corrections and the model's facts do not change while serving, and the engine's knobs are
fixed (facts a plan obeys, not choices). Output lengths are kept in memory and written to
the catalog every FLUSH_SECONDS, off the event loop: a request never waits on SQLite.

    planner = RequestPlanner.for_engine(catalog, settings, facts, knobs)
    plan = planner.plan(prompts, sampling, chat=True)   # a PhysicalPlan: knobs, estimates, choices
    planner.record(plan, results)                       # when the request has ended
    planner.flush()                                     # now and then, on a worker thread
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from catalog.settings import Settings
from operators import physical as P
from operators.engine_config import EngineConfig
from planner.context import ModelFacts, OptimizerContext, catalog_context
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

    # column statistics: an online request brings its own (planner/request.py); files are the catalog's
    def column_stats(self, source: str) -> dict[str, dict]:
        return self.catalog.column_stats(source)

    def put_column_stats(self, source: str, stats: dict[str, dict]) -> None:
        self.catalog.put_column_stats(source, stats)


class RequestPlanner:
    def __init__(self, ctx: OptimizerContext, lengths: OutputLengths, model: str) -> None:
        self.ctx, self.lengths, self.model = ctx, lengths, model

    @staticmethod
    def for_engine(catalog, settings: Settings, facts: ModelFacts, knobs: EngineConfig) -> RequestPlanner:
        """catalog: a catalog.store.Catalog kept open while serving; knobs: the running engine's."""
        lengths = OutputLengths(catalog)
        ctx = catalog_context(catalog, settings, {facts.name: facts}, Statistics(lengths), {facts.name: knobs})
        return RequestPlanner(ctx, lengths, facts.name)

    def plan(self, prompts: list[tuple[int, ...]], sampling: SamplingParams, chat: bool) -> PhysicalPlan:
        return plan_request(self.model, prompts, sampling, chat, self.ctx)

    def record(self, plan: PhysicalPlan, results: list[GenerationResult]) -> None:
        """Output lengths of the choices that ran to their end (cancelled ones say nothing about length)."""
        lengths = [(len(r.output_token_ids), r.finish_reason == "length") for r in results
                   if r.finish_reason in ("stop", "length")]
        if not lengths:
            return
        op: P.BatchedGenerate = plan.plan.op(plan.llm_nodes()[0])
        self.lengths.record(op.model, op.template, lengths)

    def flush(self) -> None:
        try:
            self.lengths.flush()
        except Exception:  # the catalog is busy or gone: the next flush tries again with newer figures only
            log.exception("writing output-length statistics to the catalog failed")
