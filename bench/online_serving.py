"""W3 of shared/workloads.md: online serving latency under Poisson load, against `sqlm serve`.

    python -m bench.online_serving                                   # rates 0.5,1,2,4 x 48 requests
    python -m bench.online_serving --rates 1,2 --requests 40 --out w3.md
    python -m bench.online_serving --url http://127.0.0.1:8080 --model-id x   # any OpenAI-compatible peer

Starts `sqlm serve` on 127.0.0.1 in its own process (unless --url names a running server),
then for each arrival rate sends --requests streaming chat requests with exponential
inter-arrival times. Prompts are drawn from W1 (product-review requests) and W2 (the
labelling instruction + a review), max_tokens uniformly from 16..128, greedy, EOS ignored
so every request generates exactly its max_tokens. The same seed gives the same schedule,
prompts and lengths on every run and against every server.

Measured at the client, from the raw SSE stream: TTFT = first content chunk - send time;
TPOT = (last chunk - first chunk) / (completion tokens - 1). Goodput = requests meeting
TTFT <= 1 s and TPOT <= 100 ms, per second of the rate's wall time (first send to last byte).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from bench.machine import cpu_model, publish
from bench.w2_data import INSTRUCTION, make_table

W1_PROMPTS = [f"Write a short product review for item number {i}. The review should mention price, quality and delivery."
              for i in range(64)]
TTFT_SLO, TPOT_SLO = 1.0, 0.100  # seconds


@dataclass(frozen=True)
class Planned:
    send_at: float  # seconds after the rate's start
    prompt: str
    max_tokens: int


@dataclass(frozen=True)
class Outcome:
    ok: bool
    ttft: float
    tpot: float | None  # None for a one-token answer
    tokens: int
    error: str = ""

    @property
    def meets_slo(self) -> bool:
        return self.ok and self.ttft <= TTFT_SLO and (self.tpot is None or self.tpot <= TPOT_SLO)


def schedule(rate: float, num_requests: int, seed: int) -> list[Planned]:
    rng = random.Random(f"{seed}-{rate}")
    reviews = make_table(200).column("body").to_pylist()
    t, planned = 0.0, []
    for _ in range(num_requests):
        t += rng.expovariate(rate)
        prompt = rng.choice(W1_PROMPTS) if rng.random() < 0.5 else f"{INSTRUCTION}\n\n{rng.choice(reviews)}"
        planned.append(Planned(t, prompt, rng.randint(16, 128)))
    return planned


async def one_request(client: httpx.AsyncClient, url: str, model: str, plan: Planned) -> Outcome:
    body = {"model": model, "messages": [{"role": "user", "content": plan.prompt}], "max_tokens": plan.max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    sent = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return Outcome(False, 0.0, None, 0, f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    last = time.perf_counter()
                    first = first or last
    except httpx.HTTPError as e:
        return Outcome(False, 0.0, None, 0, f"{type(e).__name__}: {e}")
    if first is None:
        return Outcome(False, 0.0, None, tokens, "no content")
    tpot = (last - first) / (tokens - 1) if tokens > 1 else None
    return Outcome(True, first - sent, tpot, tokens)


async def run_sequential(url: str, model: str, plan: list[Planned]) -> tuple[list[Outcome], float]:
    """The same kind of requests one at a time: the latency floor of this server on this machine now."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        start = time.perf_counter()
        outcomes = [await one_request(client, url, model, p) for p in plan]
        return outcomes, time.perf_counter() - start


async def run_rate(url: str, model: str, plan: list[Planned]) -> tuple[list[Outcome], float]:
    limits = httpx.Limits(max_connections=len(plan) + 4, max_keepalive_connections=len(plan) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()

        async def at_time(p: Planned) -> Outcome:
            await asyncio.sleep(max(0.0, start + p.send_at - time.perf_counter()))
            return await one_request(client, url, model, p)
        outcomes = await asyncio.gather(*(at_time(p) for p in plan))
        return outcomes, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(rate: float, outcomes: list[Outcome], seconds: float) -> dict:
    ok = [o for o in outcomes if o.ok]
    ttfts = [o.ttft for o in ok]
    tpots = [o.tpot for o in ok if o.tpot is not None]
    return {
        "rate": rate, "requests": len(outcomes), "completed": len(ok), "seconds": seconds,
        "output_tok_s": sum(o.tokens for o in ok) / seconds,
        "ttft_p50": percentile(ttfts, 50) if ttfts else float("nan"),
        "ttft_p99": percentile(ttfts, 99) if ttfts else float("nan"),
        "tpot_p50": percentile(tpots, 50) if tpots else float("nan"),
        "tpot_p99": percentile(tpots, 99) if tpots else float("nan"),
        "slo_met": sum(o.meets_slo for o in outcomes),
        "goodput": sum(o.meets_slo for o in outcomes) / seconds,
        "errors": sorted({o.error for o in outcomes if not o.ok})[:3],
    }


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over the runs of one rate (a single run is returned as it is)."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and key not in ("rate", "requests"):
            row[key] = statistics.median(r[key] for r in runs)
    row["errors"] = sorted({e for r in runs for e in r["errors"]})[:3]
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_scaling(args) -> list[str]:
    """`sqlm serve`'s replica flags this run passes on."""
    return (["--replicas", str(args.replicas)] if args.replicas else []) + (["--disaggregate"] if args.disaggregate else [])


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "sqlm.cli", "serve", "--model", args.model, "--port", str(port),
               "--kv-cache-memory", args.kv_cache_memory, "--log-level", "warning"]
    if args.weight_format:
        command += ["--weight-format", args.weight_format]
    if args.kernels:
        command += ["--kernels", args.kernels]
    if args.server_threads:
        command += ["--threads", str(args.server_threads)]
    command += server_scaling(args)
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`sqlm serve` exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("`sqlm serve` did not become healthy in 300 s")


def markdown(rows: list[dict], args, ceilings: dict | None, server: str, load: tuple) -> str:
    lines = [
        "## W3 — online serving (latency under load)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores. 1-minute load average {load[0]:.1f} before the run, {load[1]:.1f} after "
        f"(other processes share these cores; a load above the core count slows every figure here).",
    ]
    if ceilings:
        lines.append(f"Ceilings measured in the same run: copy bandwidth {ceilings['copy_gbs']:.1f} GB/s, "
                     f"fp32 matmul {ceilings['fp32_gflops']:.0f} GFLOP/s, bf16 matmul {ceilings['bf16_gflops']:.0f} GFLOP/s.")
    lines += [
        f"Server: {server}. Client: `python -m bench.online_serving {' '.join(sys.argv[1:])}` "
        f"(seed {args.seed}; {args.requests} streaming chat requests per rate, Poisson arrivals, prompts from W1 and W2, "
        f"max_tokens uniform 16–128, greedy, EOS ignored; httpx on the same machine over loopback).",
        f"TTFT and TPOT measured at the client, nearest-rank percentiles over the requests of one run, then the median "
        f"over {args.runs} run(s) per rate; goodput counts "
        f"requests with TTFT ≤ {TTFT_SLO:g} s and TPOT ≤ {TPOT_SLO * 1000:g} ms, per second of the rate's wall time.",
        "",
        "| arrivals (req/s) | completed | wall (s) | output tok/s | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) | TPOT p99 (ms) | met SLO | goodput (req/s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate = "one at a time" if r["rate"] == 0 else f"{r['rate']:g}"
        lines.append(f"| {rate} | {r['completed']:g}/{r['requests']} | {r['seconds']:.1f} | {r['output_tok_s']:.1f} | "
                     f"{r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {r['tpot_p50'] * 1000:.0f} | {r['tpot_p99'] * 1000:.0f} | "
                     f"{r['slo_met']:g}/{r['requests']} | {r['goodput']:.2f} |")
    errors = sorted({e for r in rows for e in r["errors"]})
    if errors:
        lines += ["", "Errors: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="0.5,1,2,4", help="arrival rates in requests per second")
    p.add_argument("--requests", type=int, default=40, help="requests per rate")
    p.add_argument("--runs", type=int, default=1, help="runs per rate; figures are the medians over runs")
    p.add_argument("--sequential", type=int, default=4, help="requests sent one at a time first, as a baseline row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2", help="model for the `sqlm serve` this benchmark starts")
    p.add_argument("--weight-format", choices=["fp32", "bf16", "native"])
    p.add_argument("--kernels", choices=["torch", "tvm"])
    p.add_argument("--kv-cache-memory", default="1GB")
    p.add_argument("--server-threads", type=int, help="torch threads of the server (default: its own default)")
    p.add_argument("--replicas", type=int, help="engine replicas of the `sqlm serve` this benchmark starts")
    p.add_argument("--disaggregate", action="store_true", help="prefill/decode disaggregation over the replicas")
    p.add_argument("--url", help="bench a server that is already running (e.g. a peer) instead of starting one")
    p.add_argument("--model-id", help="the model id to send (default: --model)")
    p.add_argument("--no-ceilings", action="store_true", help="skip measuring memory bandwidth and matmul FLOP/s")
    p.add_argument("--out", help="write the markdown here as well as to stdout")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    from bench.machine import ceilings

    process = None
    url, server = args.url, f"OpenAI-compatible server at {args.url}"
    if url is None:
        process, url = start_server(args)
        server = f"`sqlm serve --model {args.model} --kv-cache-memory {args.kv_cache_memory}" + (
            f" --weight-format {args.weight_format}" if args.weight_format else "") + (
            f" --kernels {args.kernels}" if args.kernels else "") + (
            f" --threads {args.server_threads}" if args.server_threads else "") + "".join(
            f" {flag}" for flag in server_scaling(args)) + "`"
    model_id = args.model_id or args.model
    load_before = os.getloadavg()[0]
    try:
        warm = schedule(1.0, 2, seed=args.seed + 1)  # first requests pay one-time costs (allocation, caches)
        asyncio.run(run_rate(url, model_id, [Planned(0.0, w.prompt, 16) for w in warm]))
        rows = []
        if args.sequential:
            outcomes, seconds = asyncio.run(run_sequential(url, model_id, schedule(1.0, args.sequential, args.seed)))
            rows.append(summarize(0.0, outcomes, seconds))
        for rate in rates:
            runs = []
            for _ in range(args.runs):
                outcomes, seconds = asyncio.run(run_rate(url, model_id, schedule(rate, args.requests, args.seed)))
                runs.append(summarize(rate, outcomes, seconds))
                r = runs[-1]
                print(f"rate {rate:g}/s: {r['completed']}/{r['requests']} in {r['seconds']:.1f}s, "
                      f"TTFT p50 {r['ttft_p50']:.2f}s p99 {r['ttft_p99']:.2f}s, TPOT p50 {r['tpot_p50'] * 1000:.0f}ms "
                      f"p99 {r['tpot_p99'] * 1000:.0f}ms, goodput {r['goodput']:.2f}/s", file=sys.stderr)
            rows.append(median_of(runs))
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
    load = (load_before, os.getloadavg()[0])
    text = markdown(rows, args, None if args.no_ceilings else ceilings(), server, load)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
