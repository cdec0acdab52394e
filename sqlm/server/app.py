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
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from operators.physical import EngineKnobs
from planner.context import ModelFacts, catalog_context
from planner.request import plan_request
from planner.statistics import Statistics
from runtime.engine import Engine
from runtime.engine_config import EngineConfig
from runtime.llm_ops import SharedEngine
from operators.requests import SamplingParams
from sqlm.server import completions as C
from sqlm.server import protocol as P
from sqlm.server.engine_loop import EngineLoop
from sqlm.server.errors import install_error_handlers
from sqlm.server.metrics import HTTPMetricsMiddleware, Metrics
from sqlm.server.planning import FLUSH_SECONDS, OutputLengths, RequestPlanner
from sqlm.server.sql_api import SqlService, arrow_response, json_response, wants_arrow

log = logging.getLogger("sqlm.server")
ENDPOINTS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/sql", "/health", "/metrics"})


@dataclass(frozen=True)
class ServerSettings:
    """How the served model runs; None fields come from the catalog's settings (`SET ...`)."""

    weight_format: str | None = None  # 'fp32' | 'bf16' | 'native'
    kernels: str | None = None  # 'torch' | 'tvm'
    prefill_dtype: str | None = None  # 'fp32' | 'bf16': the native/tvm path's large-batch matmuls
    catalog_path: str | None = None


def load_served_model(model_name: str, catalog):
    """A catalog model name (built-in or CREATE MODEL) or a path; returns (LoadedModel, catalog Settings)."""
    from catalog.model_catalog import ensure_model, load_entry
    from catalog.registry import load_cached

    if Path(model_name).expanduser().exists():
        loaded = load_cached(Path(model_name).expanduser().resolve())
    else:
        loaded = load_entry(ensure_model(catalog, model_name))
    return loaded, catalog.settings()


def weight_format_from(loaded, catalog_settings, requested: str | None, planned=None) -> str:
    """A forced format wins (--weight-format, then a SET weight_format); 'auto' takes what the optimizer
    picks for a typical request on this machine (`planned()`, see planned_weight_format), else fp32 where
    the weights allow it."""
    fmt = requested or (None if catalog_settings.is_auto("weight_format") else catalog_settings.weight_format)
    if fmt is None and planned is not None:
        fmt = planned()
    if fmt is None:
        fmt = "fp32" if "fp32" in loaded.weight_formats else loaded.weight_formats[0]
    if fmt not in loaded.weight_formats:
        have = ", ".join(loaded.weight_formats)
        raise ValueError(f"weight format {fmt!r} is not available for this model (have: {have})")
    return fmt


# The request an 'auto' server is configured for: one chat turn of ~64 prompt tokens and 128 new ones,
# arriving alone. Online traffic is mostly a few concurrent streams, where decode steps are small.
TYPICAL_PROMPT_TOKENS, TYPICAL_MAX_TOKENS = 64, 128


def planned_weight_format(name: str, loaded, catalog, catalog_settings, kernels: str) -> str:
    """The weight format the optimizer picks, with the server's kernels, for one typical request: priced by
    the same cost model, hardware profile and learned corrections as every SQL query and request plan
    (on this 2-core box: Q4_1 kept quantized on the TVM kernels, 13 ms/token streamed vs 61 on bf16)."""
    facts = ModelFacts.from_loaded(name, loaded)
    ctx = catalog_context(catalog, catalog_settings.with_value("kernels", kernels), {name: facts},
                          Statistics(OutputLengths(catalog)))
    prompt = tuple(range(TYPICAL_PROMPT_TOKENS))
    plan = plan_request(name, [prompt], SamplingParams(max_tokens=TYPICAL_MAX_TOKENS), False, ctx)
    return plan.plan.op(plan.llm_nodes()[0]).knobs.weight_format


def kernels_from(catalog_settings, requested: str | None) -> str:
    """A forced choice wins; 'auto' takes TVM: its norm/RoPE/SiLU kernels and the paged attention that
    reads KV blocks in place beat torch at every batch size measured, and its linears hand batches
    above their GEMV range to torch's GEMM, so no batch size makes it the slower choice."""
    if requested:
        return requested
    return "tvm" if catalog_settings.is_auto("kernels") else catalog_settings.kernels


def prefill_dtype_from(catalog_settings, requested: str | None, weight_format: str, kernels: str) -> str:
    """What the model's large-batch matmuls compute in: a forced choice wins on the native/tvm path, 'auto'
    keeps fp32 there (lossless, the planner's auto too); bf16 weights compute in bf16 and every other path
    in fp32 whatever is asked (the planner's EXPLAIN says so)."""
    if weight_format == "bf16":
        return "bf16"
    if (weight_format, kernels) != ("native", "tvm"):
        return "fp32"
    if requested:
        return requested
    return "fp32" if catalog_settings.is_auto("prefill_dtype") else catalog_settings.prefill_dtype


def create_app(model_name: str = "smollm2", engine_config: EngineConfig | None = None,
               served_name: str | None = None, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """Loads the model and builds the engine now (errors surface before serving); the engine thread
    starts with the app and stops with it."""
    from catalog.store import Catalog
    from codegen.model_kernels import build_model

    catalog = Catalog(settings.catalog_path)  # open while serving: the request planner reads and feeds it
    try:
        loaded, catalog_settings = load_served_model(model_name, catalog)
        kernels = kernels_from(catalog_settings, settings.kernels)
        name = served_name or model_name
        weight_format = weight_format_from(
            loaded, catalog_settings, settings.weight_format,
            lambda: planned_weight_format(name, loaded, catalog, catalog_settings, kernels))
        log.info("serving %s with %s weights on %s kernels", name, weight_format, kernels)
        prefill_dtype = prefill_dtype_from(catalog_settings, settings.prefill_dtype, weight_format, kernels)
        if settings.prefill_dtype not in (None, prefill_dtype):
            log.warning("--prefill-dtype %s has no effect on the %s/%s path (only native/tvm has a bf16 prefill)",
                        settings.prefill_dtype, weight_format, kernels)
        model = build_model(loaded, kernels=kernels, weight_format=weight_format, prefill_dtype=prefill_dtype)
        config = engine_config or EngineConfig.from_settings(catalog_settings)
        engine = Engine(model, loaded.tokenizer, config)
        knobs = EngineKnobs(config.max_batch_size, config.prefill_chunk_tokens, config.kv_block_size,
                            engine.stats.kv_cache_bytes, config.prefix_cache, config.scheduling, weight_format, kernels,
                            kv_cache_dtype=config.resolved_kv_cache_dtype(weight_format),
                            attention_kernel=config.attention_kernel, prefill_dtype=prefill_dtype)
        planner = RequestPlanner.for_engine(catalog, catalog_settings, ModelFacts.from_loaded(name, loaded), knobs)
    except BaseException:
        catalog.close()
        raise
    context = loaded.config.max_position_embeddings
    # The engine keeps one block of slack per sequence (copy-on-write of a fully cached prefix).
    kv_tokens = (engine.load.kv_blocks_total - 1) * engine.stats.block_size
    served = C.ServedModel(name, loaded.tokenizer, context, loaded.config.vocab_size, min(context, kv_tokens), planner)
    engine_loop = EngineLoop(engine)
    metrics = Metrics(served.name)
    sql = SqlService(settings.catalog_path, SharedEngine(str(loaded.path), knobs, engine_loop.run))

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
    install_error_handlers(app)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)

    @app.get("/health")
    async def health():
        if not engine_loop.alive:
            return JSONResponse({"status": "engine thread stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(engine_loop.snapshot), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> P.ModelList:
        return P.ModelList(data=[P.ModelCard(id=served.name, created=served.created, max_model_len=served.context)])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, request: Request):
        C.check_model(served, body.model)
        job = C.make_job(served, body, [C.chat_prompt(served, body)], "chatcmpl", "messages", chat=True)
        return await _respond(body, request, job, chat=True)

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request):
        C.check_model(served, body.model)
        job = C.make_job(served, body, C.completion_prompts(served, body), "cmpl", "prompt", chat=False)
        return await _respond(body, request, job, chat=False)

    async def _respond(body, request: Request, job: C.Job, chat: bool):
        if body.stream:
            events = await C.stream_events(engine_loop, metrics, request, job, chat, body.include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
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
