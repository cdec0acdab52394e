"""`sqlm serve`: an OpenAI-compatible HTTP server over one shared engine, or over engine replicas on Ray.

    sqlm serve --host 127.0.0.1 --port 8000 --model smollm2
    sqlm serve --replicas 2          # two engine processes behind a cache-aware router
    sqlm serve --replicas 2 --disaggregate   # one computes prompts, the other decodes with their KV

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (SSE with
`stream: true`), POST /v1/sql, GET /v1/explain, GET /health, GET /metrics (Prometheus).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from sqlm.server.app import ServerSettings, create_app
from sqlm.server.guard import DEFAULT_MAX_BODY_BYTES

__all__ = ["create_app", "main", "ServerSettings"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sqlm serve", description="OpenAI-compatible HTTP server over sqlm's engine.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="smollm2", help="catalog model name or a path to a GGUF file / HF directory")
    p.add_argument("--served-model-name", help="the model id clients use (default: --model)")
    p.add_argument("--weight-format", choices=["fp32", "bf16", "native"],
                   help="default: the catalog's weight_format setting; 'auto' takes the optimizer's pick for a typical "
                        "request on this machine")
    p.add_argument("--kernels", choices=["torch", "tvm"],
                   help="kernel implementation (default: the catalog's kernels setting; 'auto': the optimizer's pick)")
    p.add_argument("--prefill-dtype", choices=["fp32", "bf16"],
                   help="element type of the native/tvm path's matmuls over >= 64 rows; bf16 is faster and rounds "
                        "activations and weights to 8 mantissa bits (default: the catalog's prefill_dtype "
                        "setting; 'auto' means fp32)")
    p.add_argument("--kv-cache-memory", help="KV pool budget in bytes or as '2GB' (default: the catalog setting)")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: the catalog's threads setting)")
    p.add_argument("--scheduling", choices=["auto", "fcfs", "spf", "priority"],
                   help="admission order: fcfs, or spf (shortest predicted output first, predictions learned from "
                        "earlier requests, aged so none starves); every policy runs a lower priority value first, "
                        "so 'priority' (vLLM's name) is fcfs within a priority (default: the optimizer's pick)"),
    p.add_argument("--speculative", choices=["auto", "off", "ngram", "draft"],
                   help="speculative decoding: n-gram prompt lookup, or the smallest catalog model with the served "
                        "model's tokenizer, drafts tokens that one step verifies (greedy output unchanged); auto: "
                        "where the optimizer expects it to pay, drafting only while few sequences decode (default: "
                        "the catalog's speculative setting)")
    p.add_argument("--replicas", type=int,
                   help="engine replicas, each a Ray actor with its own process, KV pool and threads; a request goes to "
                        "the replica holding the longest start of its prompt, balanced against load (SGLang's "
                        "cache-aware router); a replica that dies is restarted and its requests run again on another. "
                        "Starts a local Ray, or joins the cluster RAY_ADDRESS names (default: the catalog's replicas "
                        "setting; 'auto': one engine in this process on one machine)")
    p.add_argument("--disaggregate", action="store_true",
                   help="prefill/decode disaggregation over the replicas: some compute prompts and pass their KV "
                        "blocks through Ray's object store to the others, which decode (needs --replicas >= 2)")
    p.add_argument("--prefill-replicas", type=int,
                   help="with --disaggregate, how many replicas prefill (default: a quarter, at least one)")
    p.add_argument("--home", help="catalog directory (default $SQLM_HOME or ~/.sqlm)")
    p.add_argument("--api-key", default=os.environ.get("SQLM_API_KEY"),
                   help="require 'Authorization: Bearer <key>' on every endpoint but /health and /metrics "
                        "(default: $SQLM_API_KEY; none: open)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"larger request bodies get a 413 before they are read (default {DEFAULT_MAX_BODY_BYTES:,})")
    p.add_argument("--sql-files", metavar="DIR",
                   help="the one directory /v1/sql may read (read_csv, read_parquet, ...) and COPY into "
                        "(default: no file access)")
    p.add_argument("--sql-write", action="store_true",
                   help="let /v1/sql CREATE TABLE / CREATE MODEL in the catalog (default: refused)")
    p.add_argument("--explain", action="store_true",
                   help="print the plan the engine is configured with (every knob, its cost and runner-up) and exit")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    import uvicorn

    from catalog.errors import ModelError
    from catalog.settings import SettingError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(args.model, None, args.served_model_name,
                         ServerSettings(weight_format=args.weight_format, kernels=args.kernels,
                                        prefill_dtype=args.prefill_dtype, kv_cache_memory=args.kv_cache_memory,
                                        max_batch_size=args.max_batch_size, threads=args.threads,
                                        scheduling={"priority": "fcfs"}.get(args.scheduling, args.scheduling),
                                        speculative=args.speculative,
                                        catalog_path=args.home, api_key=args.api_key,
                                        max_body_bytes=args.max_body_bytes, sql_files=args.sql_files,
                                        sql_write=args.sql_write, replicas=args.replicas,
                                        disaggregate=args.disaggregate, prefill_replicas=args.prefill_replicas))
        if args.explain:
            print(app.state.explain_text)
            return 0
    except (ModelError, SettingError, ValueError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    if not args.api_key and not _loopback(args.host):
        logging.getLogger("sqlm.server").warning(
            "serving on %s without an API key: anyone who reaches this address can use the server "
            "(set --api-key or SQLM_API_KEY)", args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
