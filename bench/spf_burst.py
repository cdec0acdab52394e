"""A burst of long then short requests: mean latency under shortest-predicted-first against FCFS.

    python -m bench.spf_burst [--long 4] [--short 4] [--max-batch-size 2] [--out bench/results/spf_burst.md]

The server's own pieces on SmolLM2: its engine, with the per-request length predictor
(planner/length_predictor.py) as the spf predictor. The predictor first learns from a
history of similar requests (stories and one-word answers on other topics, run through
the engine); then `--long` story requests arrive, then `--short` one-word questions, all
at once, and each request's latency (submission to its last token) is measured. The
issue's bar: mean latency under spf <= 0.8x FCFS.
"""
from __future__ import annotations

import argparse
import statistics
import time

from bench.machine import describe, publish

HISTORY_TOPICS = ["the sea", "a lost key", "an old clock", "a red kite", "the moon", "a city at night"]
BURST_TOPICS = ["a quiet library", "a mountain road", "a winter garden", "a paper boat"]
LONG_TOKENS, SHORT_TOKENS = 160, 16


def long_prompt(topic: str) -> str:
    return f"Write a long, detailed story about {topic}, with several scenes and characters."


def short_prompt(topic: str) -> str:
    return f"Answer with one word only: is {topic} usually quiet? Say yes or no."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", type=int, default=4)
    ap.add_argument("--short", type=int, default=4)
    ap.add_argument("--max-batch-size", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()

    from catalog.registry import resolve_model
    from codegen.kernel_set import kernel_set
    from operators.engine_config import EngineConfig
    from operators.requests import SamplingParams
    from planner.length_predictor import LengthPredictor
    from runtime.engine import Engine

    loaded = resolve_model("smollm2")
    model = kernel_set("cpu").build_model(loaded, kernels="tvm", weight_format="native")
    tok = loaded.tokenizer
    predictor = LengthPredictor()

    def sampling(long: bool) -> SamplingParams:
        return SamplingParams(max_tokens=LONG_TOKENS if long else SHORT_TOKENS, temperature=0.0)

    history = [(long_prompt(t), True) for t in HISTORY_TOPICS] + [(short_prompt(t), False) for t in HISTORY_TOPICS]
    teacher = Engine(model, tok, EngineConfig(kv_cache_memory=256 << 20, max_batch_size=8))
    results = teacher.generate([teacher.request_from_text(text, sampling(long)) for text, long in history])
    for r in results:
        predictor.record(r.prompt_token_ids, len(r.output_token_ids))

    burst = [(long_prompt(t), True) for t in BURST_TOPICS[:args.long]] + [
        (short_prompt(t), False) for t in BURST_TOPICS[:args.short]]
    rows = {}
    for policy in ("fcfs", "spf"):
        engine = Engine(model, tok, EngineConfig(kv_cache_memory=256 << 20, max_batch_size=args.max_batch_size,
                                                 scheduling=policy), predictor.expected_tokens)
        t0 = time.perf_counter()
        handles = [engine.submit(engine.request_from_text(text, sampling(long))) for text, long in burst]
        done: dict[str, float] = {}
        while engine.has_unfinished:
            engine.step()
            for h in handles:
                if h.finished and h.request_id not in done:
                    done[h.request_id] = time.perf_counter() - t0
        latencies = [done[h.request_id] for h in handles]
        rows[policy] = latencies
    fcfs, spf = statistics.mean(rows["fcfs"]), statistics.mean(rows["spf"])
    lines = [f"# Burst of {args.long} long then {args.short} short requests, max_batch_size {args.max_batch_size}", "",
             describe(), "",
             "| policy | mean latency s | short requests' mean s | long requests' mean s |", "|---|---|---|---|"]
    for policy, lat in rows.items():
        lines.append(f"| {policy} | {statistics.mean(lat):.2f} | {statistics.mean(lat[args.long:]):.2f} | "
                     f"{statistics.mean(lat[:args.long]):.2f} |")
    lines += ["", f"spf / fcfs mean latency: {spf / fcfs:.2f}x (bar: <= 0.8x)"]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
