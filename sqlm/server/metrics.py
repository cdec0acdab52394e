"""Prometheus metrics of the server, in one registry per app (so tests can run several apps).

Request-level figures (counts, tokens, TTFT, TPOT, latency) are observed by the HTTP
side when a request ends; engine-level ones (running/waiting requests, KV blocks,
prefix-cache hits) are read from each engine's latest snapshot at scrape time and carry
a `replica` label ("0" for a server with one engine). With replicas, the router's
decisions and the replicas' deaths are counted per replica too.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

import collections

from runtime.engine_loop import EngineSnapshot

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_PLANNING_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, model: str):
        self.registry = r = CollectorRegistry()
        self.model = model

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["model", *labels], registry=r)

        def gauge(name: str, doc: str) -> Gauge:  # an engine's figure: one series per replica
            return Gauge(name, doc, ["model", "replica"], registry=r)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, ["model"], buckets=buckets, registry=r)

        self.http_requests = Counter("sqlm_http_requests", "HTTP requests by endpoint and status code",
                                     ["endpoint", "status"], registry=r)
        self.finished = counter("sqlm_requests_finished", "Choices of generation requests that ended, by finish reason",
                                "finish_reason")
        self.prompt_tokens = counter("sqlm_prompt_tokens", "Prompt tokens of generation requests")
        self.generation_tokens = counter("sqlm_generation_tokens", "Tokens generated")
        self.ttft = histogram("sqlm_time_to_first_token_seconds", "Time from request arrival to its first token",
                              _LATENCY_BUCKETS)
        self.tpot = histogram("sqlm_time_per_output_token_seconds", "Mean time between a choice's output tokens",
                              _TPOT_BUCKETS)
        self.latency = histogram("sqlm_e2e_request_latency_seconds", "Time from request arrival to its last token",
                                 _LATENCY_BUCKETS)
        self.planning = histogram("sqlm_request_planning_seconds",
                                  "Time to plan a request (rules, cost model, knob choices) before it joins the batch",
                                  _PLANNING_BUCKETS)
        self.running = gauge("sqlm_num_requests_running", "Sequences in the engine's running batch")
        self.waiting = gauge("sqlm_num_requests_waiting", "Sequences queued in the engine")
        self.kv_used = gauge("sqlm_kv_blocks_used", "KV blocks in use (requests and prefix cache)")
        self.kv_active = gauge("sqlm_kv_blocks_active", "KV blocks held by running or waiting requests")
        self.kv_cached = gauge("sqlm_kv_blocks_cached", "KV blocks held only by the prefix cache (evictable)")
        self.kv_total = gauge("sqlm_kv_blocks_total", "KV blocks in the pool")
        self.kv_usage = gauge("sqlm_kv_cache_usage_ratio", "Fraction of KV blocks in use")
        self.prefix_hit_rate = gauge("sqlm_prefix_cache_hit_rate",
                                     "Prompt tokens served from the prefix cache / prompt tokens admitted")
        self.cached_prompt_tokens = gauge("sqlm_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache")
        self.preemptions = gauge("sqlm_num_preemptions", "Sequences preempted since start")
        self.engine_steps = gauge("sqlm_engine_steps", "Engine steps since start")
        self.step_failures = gauge("sqlm_engine_step_failures", "Engine steps that raised (their requests failed)")
        self.replica_up = gauge("sqlm_replica_up", "1 while the engine replica answers, 0 while it is down or restarting")
        self.routed = counter("sqlm_router_requests", "Requests the cache-aware router sent to each replica, by reason "
                              "(cache: longest cached prefix, spread: least cached, balance: least loaded)",
                              "replica", "reason")
        self.replica_failures = counter("sqlm_replica_failures",
                                        "Requests whose replica died under them (each ran again on another replica)",
                                        "replica")
        self._counted: collections.Counter = collections.Counter()  # router figures already added to the counters

    def observe_request(self, num_prompt_tokens: int, arrival: float, choices: list[tuple[list[float], str]],
                        planning_seconds: float) -> None:
        """One generation request ended; per choice: its tokens' production times and its finish reason."""
        m = self.model
        self.planning.labels(m).observe(planning_seconds)
        self.prompt_tokens.labels(m).inc(num_prompt_tokens)
        firsts, lasts = [], []
        for times, reason in choices:
            self.finished.labels(m, reason).inc()
            self.generation_tokens.labels(m).inc(len(times))
            if times:
                firsts.append(times[0])
                lasts.append(times[-1])
            if len(times) > 1:
                self.tpot.labels(m).observe((times[-1] - times[0]) / (len(times) - 1))
        if firsts:
            self.ttft.labels(m).observe(min(firsts) - arrival)
            self.latency.labels(m).observe(max(lasts) - arrival)

    def observe_engine(self, replica: str, snap: EngineSnapshot | None) -> None:
        """One engine's latest snapshot; None: the replica is down (its last figures stay)."""
        self.replica_up.labels(self.model, replica).set(snap is not None)
        if snap is None:
            return
        m, load = (self.model, replica), snap.load
        self.running.labels(*m).set(load.num_running)
        self.waiting.labels(*m).set(load.num_waiting)
        self.kv_used.labels(*m).set(load.kv_blocks_used)
        self.kv_active.labels(*m).set(load.kv_blocks_active)
        self.kv_cached.labels(*m).set(load.kv_blocks_cached)
        self.kv_total.labels(*m).set(load.kv_blocks_total)
        self.kv_usage.labels(*m).set(load.kv_blocks_used / load.kv_blocks_total if load.kv_blocks_total else 0.0)
        self.prefix_hit_rate.labels(*m).set(snap.stats.prefix_cache_hit_rate)
        self.cached_prompt_tokens.labels(*m).set(snap.stats.num_cached_prompt_tokens)
        self.preemptions.labels(*m).set(snap.stats.preemptions)
        self.engine_steps.labels(*m).set(snap.stats.num_steps)
        self.step_failures.labels(*m).set(snap.num_step_failures)

    def observe_routing(self, routes: collections.Counter, failures: list[int]) -> None:
        """The router's running totals ((replica, reason) -> requests; deaths per replica) into the counters."""
        for (k, reason), total in routes.items():
            self._catch_up(self.routed.labels(self.model, str(k), reason), ("route", k, reason), total)
        for k, total in enumerate(failures):
            self._catch_up(self.replica_failures.labels(self.model, str(k)), ("failure", k), total)

    def _catch_up(self, counter, key: tuple, total: int) -> None:
        """A Prometheus counter only goes up: add what `total` gained since the last scrape."""
        if total > self._counted[key]:
            counter.inc(total - self._counted[key])
            self._counted[key] = total

    def render(self, snapshots: list[tuple[str, int | None, EngineSnapshot | None]]) -> bytes:
        for replica, _, snap in snapshots:
            self.observe_engine(replica, snap)
        return generate_latest(self.registry)


class HTTPMetricsMiddleware:
    """Counts every HTTP response by route and status code (pure ASGI: streaming passes straight through)."""

    def __init__(self, app, metrics: Metrics, endpoints: frozenset[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_and_count)
        finally:
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"  # bounded label values
            self.metrics.http_requests.labels(endpoint, str(status["code"])).inc()
