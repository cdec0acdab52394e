"""The FastAPI app: one model, one shared engine on its own thread, OpenAI's endpoints, /v1/sql.

    app = create_app("smollm2")            # loads the model, builds the engine
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every generation request is planned against that engine (planning.py) and joins its batch;
/v1/sql's model calls on the served model join the same batch (runtime.llm_ops.SharedEngine).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from catalog.settings import Settings
from operators.engine_config import EngineConfig
from operators.requests import SamplingParams
from planner.context import ModelFacts, catalog_context
from planner.explain import render_json, render_text
from planner.lower import PhysicalPlan
from planner.request import plan_request
from planner.statistics import Statistics
from runtime.engine_loop import EngineLoop
from runtime.kv_tiers import KVTierSpec
from runtime.llm_ops import SharedEngine, model_options
from runtime.replica_loop import ReplicaLoop, prefill_share
from runtime.replicas import EngineSpec, ReplicaSet, build_engine
from sqlm.policy import SqlPolicy
from sqlm.server import completions as C
from sqlm.server import protocol as P
from sqlm.server.errors import install_error_handlers
from sqlm.server.guard import DEFAULT_MAX_BODY_BYTES, RequestGuard
from sqlm.server.metrics import HTTPMetricsMiddleware, Metrics
from planner.length_predictor import LengthPredictor
from sqlm.server.planning import FLUSH_SECONDS, OutputLengths, RequestPlanner, learned_predictor
from sqlm.server.sql_api import SqlService, arrow_response, json_response, wants_arrow

log = logging.getLogger("sqlm.server")
ENDPOINTS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/sql", "/v1/explain", "/health",
                       "/metrics"})


@dataclass(frozen=True)
class ServerSettings:
    """Knobs the command line forces (None: the catalog's setting, and where that is auto the optimizer's pick)."""

    weight_format: str | None = None  # 'fp32' | 'bf16' | 'native'
    kernels: str | None = None  # 'torch' | 'tvm'
    prefill_dtype: str | None = None  # 'fp32' | 'bf16': the native/tvm path's large-batch matmuls
    kv_cache_memory: str | int | None = None  # bytes, or text like '2GB'
    max_batch_size: int | None = None
    threads: int | None = None
    scheduling: str | None = None  # 'fcfs' | 'spf' (every policy runs a lower priority value first)
    speculative: str | None = None  # 'auto' | 'off' | 'ngram' | 'draft'
    catalog_path: str | None = None
    api_key: str | None = None  # every endpoint but /health and /metrics needs 'Authorization: Bearer <key>'
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    sql_files: str | None = None  # the one directory /v1/sql may read and COPY into (None: no file access)
    sql_write: bool = False  # /v1/sql may CREATE TABLE / CREATE MODEL in the catalog
    replicas: int | None = None  # engine replicas (Ray actors) requests are routed over
    disaggregate: bool = False  # some replicas prefill, the others decode (KV through Ray's object store)
    prefill_replicas: int | None = None  # with disaggregate: how many prefill (None: replica_loop.prefill_share)

    KNOBS = ("weight_format", "kernels", "prefill_dtype", "kv_cache_memory", "max_batch_size", "threads", "scheduling",
             "speculative", "replicas")


def load_served_model(model_name: str, catalog):
    """A catalog model name (built-in or CREATE MODEL) or a path; returns (LoadedModel, catalog Settings)."""
    from catalog.model_catalog import ensure_model, load_entry
    from catalog.registry import load_cached

    if Path(model_name).expanduser().exists():
        loaded = load_cached(Path(model_name).expanduser().resolve())
    else:
        loaded = load_entry(ensure_model(catalog, model_name))
    return loaded, catalog.settings()


def served_settings(catalog_settings: Settings, forced: ServerSettings, engine_config: EngineConfig | None) -> Settings:
    """The catalog's settings with what the server forces SET on top: its command line's knobs and, where given,
    every engine knob of `engine_config` (tests and embedders bound the KV pool this way). One mechanism for
    the server and for SQL: the optimizer obeys SET values and decides the rest."""
    settings = catalog_settings
    for name in ServerSettings.KNOBS:
        if getattr(forced, name) is not None:
            settings = settings.with_value(name, getattr(forced, name))
    if engine_config is not None:
        for name in ("kv_block_size", "max_batch_size", "prefill_chunk_tokens", "scheduling", "kv_cache_memory",
                     "kv_cache_dtype"):
            value = getattr(engine_config, name)
            if value is not None and value != "auto":
                settings = settings.with_value(name, value)
        settings = settings.with_value("prefix_cache", "on" if engine_config.prefix_cache else "off")
    return settings


# The request a server is configured for: one chat turn of ~64 prompt tokens and 128 new ones, arriving
# alone. Online traffic is mostly a few concurrent streams, where decode steps are small.
TYPICAL_PROMPT_TOKENS, TYPICAL_MAX_TOKENS = 64, 128


def plan_typical_request(name: str, loaded, catalog, settings: Settings, predictor: LengthPredictor) -> PhysicalPlan:
    """The optimizer's plan of one typical request under `settings`: its model call's configuration is the
    server's engine (priced by the same cost model, hardware profile and learned corrections as every SQL
    query and request plan, judged by latency as online work is), and GET /v1/explain shows it."""
    facts = ModelFacts.from_loaded(name, loaded)
    ctx = catalog_context(catalog, settings, {name: facts}, Statistics(OutputLengths(catalog)))
    ctx = replace(ctx, online=True, length_spread=predictor.spread())
    prompt = tuple(range(TYPICAL_PROMPT_TOKENS))
    return plan_request(name, [prompt], SamplingParams(max_tokens=TYPICAL_MAX_TOKENS), False, ctx)


def start_replicas(spec: EngineSpec, replicas: int, prefill_replicas: int = 0):
    """`replicas` engine replicas on Ray, each building `spec`, behind a cache-aware router; returns once every
    replica has loaded its model (one that cannot is an error here, before serving): (ReplicaLoop, the first
    replica's EngineStats and EngineLoad — every replica builds the same engine)."""
    import ray

    if not 0 <= prefill_replicas < replicas:
        raise ValueError(f"--prefill-replicas must leave at least one of the {replicas} replicas to decode, "
                         f"got {prefill_replicas}")
    replica_set = ReplicaSet(spec, replicas)
    try:
        ready = ray.get([actor.snapshot.remote() for actor in replica_set.actors])
    except ray.exceptions.RayError as e:
        replica_set.close()
        raise ValueError(f"an engine replica could not start: {e}") from e
    stats, load = ready[0][1].stats, ready[0][1].load
    return ReplicaLoop(replica_set, stats.block_size, load.kv_blocks_total, prefill_replicas), stats, load


def create_app(model_name: str = "smollm2", engine_config: EngineConfig | None = None,
               served_name: str | None = None, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """Loads the model and builds the engine now (errors surface before serving); the engine thread
    starts with the app and stops with it. engine_config: engine knobs to force (see served_settings)."""
    import torch

    from catalog.store import Catalog

    catalog = Catalog(settings.catalog_path)  # open while serving: the request planner reads and feeds it
    try:
        loaded, catalog_settings = load_served_model(model_name, catalog)
        name = served_name or model_name
        knob_settings = served_settings(catalog_settings, settings, engine_config)
        predictor = learned_predictor(catalog, name)
        typical = plan_typical_request(name, loaded, catalog, knob_settings, predictor)
        config = typical.plan.op(typical.llm_nodes()[0]).knobs
        if config.weight_format not in loaded.weight_formats:
            have = ", ".join(loaded.weight_formats)
            raise ValueError(f"weight format {config.weight_format!r} is not available for this model (have: {have})")
        log.info("serving %s with %s weights on %s kernels", name, config.weight_format, config.kernels)
        if settings.prefill_dtype not in (None, config.prefill_dtype):
            log.warning("--prefill-dtype %s has no effect on the %s/%s path (only native/tvm has a bf16 prefill)",
                        settings.prefill_dtype, config.weight_format, config.kernels)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        draft = None
        if config.speculative == "draft":  # the smallest catalog model with the served model's tokenizer
            from catalog.model_catalog import ensure_model, load_entry

            draft = str(load_entry(ensure_model(catalog, config.draft_model)).path)
        spec = EngineSpec(str(loaded.path), name, config, model_options(config), draft,
                          KVTierSpec(catalog.home, name, str(loaded.path)), predictor.expected_tokens)
        if settings.disaggregate and config.replicas < 2:
            raise ValueError(f"disaggregating prefill and decode needs at least 2 replicas, the plan has "
                             f"{config.replicas} (set --replicas)")
        if config.replicas > 1:
            prefill = 0
            if settings.disaggregate:
                prefill = settings.prefill_replicas or prefill_share(config.replicas)
            (engine_loop, stats, load), model = start_replicas(spec, config.replicas, prefill), None
        else:
            engine = build_engine(spec)
            engine_loop, model, stats, load = EngineLoop(engine), engine.model, engine.stats, engine.load
        # what request plans obey: the engine as it runs (its pool's real size)
        knobs = replace(config, kv_cache_memory=stats.kv_cache_bytes, kv_cache_dtype=config.resolved_kv_cache_dtype())
        planner = RequestPlanner.for_engine(catalog, knob_settings, ModelFacts.from_loaded(name, loaded), knobs,
                                            predictor)
    except BaseException:
        catalog.close()
        raise
    context = loaded.config.max_position_embeddings
    # The engine keeps one block of slack per sequence (copy-on-write of a fully cached prefix).
    kv_tokens = (load.kv_blocks_total - 1) * stats.block_size
    served = C.ServedModel(name, loaded.tokenizer, context, loaded.config.vocab_size, min(context, kv_tokens), planner)
    replicated = isinstance(engine_loop, ReplicaLoop)
    metrics = Metrics(served.name)
    sql = SqlService(settings.catalog_path, SharedEngine(str(loaded.path), knobs, engine_loop.run),
                     SqlPolicy.sandbox(settings.sql_files, settings.sql_write))

    async def flush_statistics():
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await asyncio.to_thread(planner.flush)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_loop.start(asyncio.get_running_loop())
        flusher = asyncio.create_task(flush_statistics())
        try:
            yield
        finally:
            flusher.cancel()
            engine_loop.stop()
            sql.close()
            planner.flush()
            catalog.close()

    app = FastAPI(title="sqlm", lifespan=lifespan)
    app.state.served, app.state.model, app.state.engine_loop, app.state.metrics = served, model, engine_loop, metrics
    app.state.engine_config, app.state.explain_text = config, render_text(typical, verbose=True)
    install_error_handlers(app)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)
    # outermost: a refused request (no key, too large) costs nothing further
    app.add_middleware(RequestGuard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)

    @app.get("/health")
    async def health():
        if not engine_loop.alive:
            return JSONResponse({"status": "engine thread stopped" if not replicated else "no engine replica is up"},
                                status_code=503)
        if not replicated:
            return {"status": "ok"}
        return {"status": "ok", "replicas": [{"replica": int(r), "role": engine_loop.role(int(r)), "pid": pid,
                                              "up": snap is not None} for r, pid, snap in await engine_loop.snapshots()]}

    @app.get("/metrics")
    async def prometheus_metrics():
        if replicated:
            metrics.observe_routing(engine_loop.routes, engine_loop.failures)
        return Response(metrics.render(await engine_loop.snapshots()), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/explain")
    async def explain_engine(format: str = "text"):
        """The plan the server's engine was configured with: every knob, its estimate and runner-up."""
        if format == "json":
            return Response(render_json(typical, verbose=True), media_type="application/json")
        if format != "text":
            return JSONResponse({"error": {"message": f"format must be 'text' or 'json', got {format!r}",
                                           "type": "invalid_request_error", "param": "format"}}, status_code=400)
        return Response(render_text(typical, verbose=True), media_type="text/plain")

    @app.get("/v1/models")
    async def list_models() -> P.ModelList:
        return P.ModelList(data=[P.ModelCard(id=served.name, created=served.created, max_model_len=served.context)])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, request: Request):
        C.check_model(served, body.model)
        # tokenizing (a chat template, a prompt of megabytes) runs off the event loop: /health stays responsive
        job = await asyncio.to_thread(
            lambda: C.make_job(served, body, [C.chat_prompt(served, body)], "chatcmpl", "messages", chat=True))
        return await _respond(body, request, job, chat=True)

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request):
        C.check_model(served, body.model)
        job = await asyncio.to_thread(
            lambda: C.make_job(served, body, C.completion_prompts(served, body), "cmpl", "prompt", chat=False))
        return await _respond(body, request, job, chat=False)

    async def _respond(body, request: Request, job: C.Job, chat: bool):
        if body.stream:
            events = await C.stream_events(engine_loop, metrics, request, job, chat, body.include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if body.use_beam_search:
            response = await C.complete_beams(engine_loop, metrics, request, job, body, chat)
        else:
            response = await C.complete(engine_loop, metrics, request, job, chat)
        if response is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return response

    @app.post("/v1/sql")
    async def run_sql(body: P.SqlRequest, request: Request):
        table, message = await sql.execute(body.query)
        if wants_arrow(request.headers.get("accept")):
            return arrow_response(table)
        return json_response(table, message)

    return app
