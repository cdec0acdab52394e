"""docs/SCALING.md's figures: W3 replayed at 10-100x its arrival rate over N replicas, in simulation, with the
per-step costs of sqlm's engine measured on this machine.

    python -m bench.scaling_sim                    # measure step costs (~1 min), simulate, write the report + plot
    python -m bench.scaling_sim --costs bench/results/step_costs.json    # reuse a measurement

Real: the step costs (this machine's engine on the default Q4_1/TVM path, fitted as below), the prompts (W3's,
through the model's chat template, so W2's shared labelling instruction is a shared prefix), the router
(runtime/routing.py's CacheAwareRouter itself, as `sqlm serve --replicas` runs it), 16-token prefix-cache blocks.
Modelled: a replica is one machine like this one running sqlm's engine: continuous batching, every running sequence
decodes one token a step, waiting ones are admitted first come first served under a prefill-token budget and the KV
pool; a step takes fixed + per prefill token + per decoding sequence + per context token attended (least squares
over measured steps). Prefill/decode disaggregation: prefill replicas compute the prompt, its whole blocks go to a
decode replica over the network (--network-gbps, plus one round trip) and the decode replica computes the rest, the
first token included, as runtime/replica_loop.py does.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field

from bench.machine import cpu_model, publish
from bench.online_serving import TPOT_SLO, TTFT_SLO, schedule
from runtime.routing import CachedBlocks, CacheAwareRouter

BLOCK = 16
PREFILL_BUDGET = 512  # prompt tokens per step (the engine's prefill_chunk_tokens)
MAX_BATCH = 64
KV_TOKENS = 20_000  # a replica's KV pool in tokens (1 GB of fp32 KV for SmolLM2-135M holds ~22k)


@dataclass(frozen=True)
class StepCosts:
    """Seconds of one engine step: fixed + prefill_token * prompt tokens + decode_seq * sequences decoding +
    context_token * tokens those sequences attend to."""

    fixed: float
    prefill_token: float
    decode_seq: float
    context_token: float
    kv_bytes_per_token: int
    cpu: str
    plan: str

    def step(self, prefill_tokens: int, decoding: int, context: int) -> float:
        return (self.fixed + self.prefill_token * prefill_tokens + self.decode_seq * decoding
                + self.context_token * context)


def measure_step_costs() -> StepCosts:
    """Time the engine's steps on prompts alone and on decode batches of several sizes and contexts; fit."""
    import numpy as np

    from catalog.registry import resolve_model
    from codegen.kernel_set import kernel_set
    from operators.engine_config import EngineConfig
    from operators.requests import GenerationRequest, SamplingParams
    from runtime.engine import Engine
    from runtime.model_runner import PagedKVCache

    loaded = resolve_model("smollm2")
    model = kernel_set("cpu").build_model(loaded, kernels="tvm", weight_format="native")
    config = EngineConfig(kv_cache_memory=1 << 30, max_batch_size=MAX_BATCH, prefill_chunk_tokens=PREFILL_BUDGET,
                          prefix_cache=False, speculative="off")
    rng = random.Random(0)
    rows, times = [], []

    def tokens(n: int) -> tuple[int, ...]:
        return tuple(rng.randrange(100, 40_000) for _ in range(n))

    engine = Engine(model, loaded.tokenizer, config)
    for length in (32, 64, 128, 256, 512) * 3:  # prompts alone
        engine.submit(GenerationRequest(tokens(length), SamplingParams(max_tokens=1, ignore_eos=True)))
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
        rows.append((1, length, 0, 0))
        while engine.has_unfinished:
            engine.step()
    for batch, prompt in ((1, 32), (4, 32), (16, 32), (32, 32), (64, 32), (8, 400), (32, 200)):  # decode batches
        engine = Engine(model, loaded.tokenizer, config)
        for _ in range(batch):
            engine.submit(GenerationRequest(tokens(prompt), SamplingParams(max_tokens=24, ignore_eos=True)))
        while engine.stats.num_prompt_tokens < batch * prompt or engine.load.num_waiting:
            engine.step()
        engine.step()
        for i in range(12):
            t0 = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t0)
            rows.append((1, 0, batch, batch * (prompt + 2 + i)))
    fit, *_ = np.linalg.lstsq(np.array(rows, float), np.array(times), rcond=None)
    fixed, prefill_token, decode_seq, context_token = (max(0.0, float(c)) for c in fit)
    kv = PagedKVCache.bytes_per_block(loaded.config, BLOCK) // BLOCK
    return StepCosts(fixed, prefill_token, decode_seq, context_token, kv, cpu_model(), "Q4_1 weights on TVM kernels")


# --- the workload ---------------------------------------------------------------------------------------------

@dataclass(eq=False)  # compared by identity
class Request:
    arrival: float
    prompt: tuple[int, ...]
    max_tokens: int
    cached: int = 0  # prompt tokens found in the serving replica's prefix cache
    done_prompt: int = 0  # prompt tokens computed (cached ones included)
    generated: int = 0
    first: float | None = None
    last: float | None = None
    replica: int = -1  # the replica that decodes it
    handed_off: bool = False  # its prompt's KV came from a prefill replica


def w3_requests(rate: float, count: int, seed: int, encode) -> list[Request]:
    """The requests bench.online_serving sends for W3 at `rate` (its schedule: prompt mix, max_tokens, Poisson
    arrivals), their prompts tokenized by `encode`."""
    return [Request(p.send_at, encode(p.prompt), p.max_tokens) for p in schedule(rate, count, seed)]


# --- one replica ----------------------------------------------------------------------------------------------

@dataclass
class Replica:
    role: str  # 'both' | 'prefill' | 'decode'
    waiting: collections.deque = field(default_factory=collections.deque)
    running: list = field(default_factory=list)
    busy_until: float = 0.0
    stepping: bool = False
    cache: CachedBlocks = field(default_factory=lambda: CachedBlocks(BLOCK, KV_TOKENS // BLOCK))

    def cached_tokens(self, prompt) -> int:
        """As the engine matches: the prompt's last token is always computed."""
        return self.cache.matched_tokens(prompt, len(prompt) - 1)


class Cluster:
    """N simulated replicas behind a routing policy; advance() runs them until every request has finished."""

    def __init__(self, costs: StepCosts, replicas: int, policy: str, prefill_replicas: int = 0,
                 network_gbps: float = 10.0, rtt: float = 0.0005):
        self.costs, self.policy = costs, policy
        roles = ["prefill"] * prefill_replicas + ["decode" if prefill_replicas else "both"] * (replicas - prefill_replicas)
        self.replicas = [Replica(role) for role in roles]
        self.prefillers = tuple(range(prefill_replicas))
        self.decoders = tuple(range(prefill_replicas, replicas))
        self.router = CacheAwareRouter(replicas, BLOCK, KV_TOKENS // BLOCK)
        self.network_bytes_per_s, self.rtt = network_gbps * 1e9 / 8, rtt
        self.events: list = []  # (time, order, kind, payload)
        self._order = 0
        self._rr = 0

    def _push(self, t: float, kind: str, payload) -> None:
        import heapq

        self._order += 1
        heapq.heappush(self.events, (t, self._order, kind, payload))

    def _pick(self, prompt, among: tuple[int, ...]) -> tuple[int, str]:
        if self.policy == "round-robin":
            self._rr += 1
            return among[self._rr % len(among)], "round-robin"
        if self.policy == "least-loaded":
            k = min(among, key=lambda k: (self.router.load[k], k))
            return k, "least-loaded"
        route = self.router.route(prompt, among=among)
        return route.replica, route.reason

    def run(self, requests: list[Request]) -> list[Request]:
        import heapq

        for r in requests:
            self._push(r.arrival, "arrive", r)
        while self.events:
            now, _, kind, payload = heapq.heappop(self.events)
            if kind == "arrive":
                self._arrive(now, payload)
            elif kind == "handoff":  # the decode replica adopts the prompt's blocks, then runs the request
                k, request = payload
                self.replicas[k].cache.remember(request.prompt)
                self._enqueue(now, k, request)
            else:
                self._finish_step(now, payload)
        return requests

    def _arrive(self, now: float, r: Request) -> None:
        k, reason = self._pick(r.prompt, self.decoders)
        r.replica = k
        self.router.started(k, r.prompt)
        if self.prefillers and reason != "cache":
            p, _ = self._pick(r.prompt, self.prefillers)
            self.router.started(p, r.prompt)
            self._enqueue(now, p, r)
        else:
            self._enqueue(now, k, r)

    def _enqueue(self, now: float, k: int, r: Request) -> None:
        replica = self.replicas[k]
        replica.waiting.append(r)
        if not replica.stepping:
            self._start_step(max(now, replica.busy_until), k)

    def _start_step(self, now: float, k: int) -> None:
        replica = self.replicas[k]
        decoding = [r for r in replica.running if r.done_prompt >= len(r.prompt)]
        budget = PREFILL_BUDGET - len(decoding)
        kv_used = sum(len(r.prompt) + r.generated for r in replica.running)
        while replica.waiting and len(replica.running) < MAX_BATCH:
            r = replica.waiting[0]
            if kv_used + len(r.prompt) + r.max_tokens > KV_TOKENS and replica.running:
                break
            replica.waiting.popleft()
            r.done_prompt = replica.cached_tokens(r.prompt)
            if not r.handed_off:
                r.cached = r.done_prompt
            replica.running.append(r)
            kv_used += len(r.prompt) + r.max_tokens
        chunks = {}
        for r in replica.running:
            if r.done_prompt < len(r.prompt) and budget > 0:
                chunks[id(r)] = n = min(budget, len(r.prompt) - r.done_prompt)
                budget -= n
        if not decoding and not chunks:
            replica.stepping = False
            return
        context = sum(len(r.prompt) + r.generated for r in decoding)
        seconds = self.costs.step(sum(chunks.values()), len(decoding), context)
        replica.stepping, replica.busy_until = True, now + seconds
        self._push(now + seconds, "step", (k, decoding, chunks))

    def _finish_step(self, now: float, payload) -> None:
        k, decoding, chunks = payload
        replica = self.replicas[k]
        finished = []
        for r in replica.running:
            if id(r) in chunks:
                r.done_prompt += chunks[id(r)]
                if r.done_prompt < len(r.prompt):
                    continue
                replica.cache.remember(r.prompt)
                if replica.role == "prefill":  # the prompt's whole blocks go to the decode replica
                    finished.append(r)
                    whole = len(r.prompt) // BLOCK * BLOCK
                    delay = self.rtt + whole * self.costs.kv_bytes_per_token / self.network_bytes_per_s
                    r.done_prompt, r.handed_off = 0, True
                    self.router.finished(k)
                    self._push(now + delay, "handoff", (r.replica, r))
                    continue
            elif r not in decoding:
                continue
            r.generated += 1
            r.first = r.first if r.first is not None else now
            r.last = now
            if r.generated >= r.max_tokens:
                finished.append(r)
                self.router.finished(k)
        replica.running = [r for r in replica.running if r not in finished]
        self._start_step(now, k)


def prefill_replicas(n: int) -> int:
    """`sqlm serve --disaggregate`'s default split (runtime.replica_loop.prefill_share)."""
    from runtime.replica_loop import prefill_share

    return prefill_share(n)


# --- the experiment -----------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


def summarize(requests: list[Request]) -> dict:
    ttft = [r.first - r.arrival for r in requests]
    tpot = [(r.last - r.first) / (r.generated - 1) for r in requests if r.generated > 1]
    span = max(r.last for r in requests) - min(r.arrival for r in requests)
    met = sum(1 for r, t in zip(requests, ttft) if t <= TTFT_SLO and (r.generated < 2 or
                                                                       (r.last - r.first) / (r.generated - 1) <= TPOT_SLO))
    prompt = sum(len(r.prompt) for r in requests)
    return {"ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99), "tpot_p50": percentile(tpot, 50),
            "tpot_p99": percentile(tpot, 99), "goodput": met / span, "met": met, "requests": len(requests),
            "cached": sum(r.cached for r in requests) / prompt}


def simulate(costs: StepCosts, rates, replica_counts, count: int, seed: int, network_gbps: float, encode) -> list[dict]:
    rows = []
    for rate in rates:
        for n in replica_counts:
            setups = [("round-robin", 0), ("least-loaded", 0), ("cache-aware", 0)]
            if n >= 2:
                setups.append(("cache-aware", prefill_replicas(n)))
            for policy, prefill in setups:
                requests = w3_requests(rate, count, seed, encode)
                Cluster(costs, n, policy, prefill, network_gbps).run(requests)
                mode = f"{policy}, {prefill} prefill + {n - prefill} decode" if prefill else policy
                rows.append({"rate": rate, "replicas": n, "mode": mode, **summarize(requests)})
    return rows


def markdown(costs: StepCosts, rows: list[dict], args) -> str:
    lines = ["## W3 at 10-100x over N replicas (simulated with this machine's step costs)", "",
             f"Step costs measured on {costs.cpu} ({costs.plan}), least-squares fit: {costs.fixed * 1e3:.2f} ms a step "
             f"+ {costs.prefill_token * 1e6:.1f} us a prompt token + {costs.decode_seq * 1e6:.0f} us a decoding "
             f"sequence + {costs.context_token * 1e9:.0f} ns a context token attended; KV "
             f"{costs.kv_bytes_per_token / 1024:.0f} KiB a token, moved at {args.network_gbps:g} Gbit/s when "
             f"disaggregated. `python -m bench.scaling_sim {' '.join(args.argv)}`: {args.requests} requests per row, "
             f"W3's prompt mix and lengths, Poisson arrivals; a replica = one such 2-core machine, KV pool "
             f"{KV_TOKENS:,} tokens, batch <= {MAX_BATCH}, {PREFILL_BUDGET} prompt tokens a step. Goodput: requests "
             f"a second meeting TTFT <= {TTFT_SLO:g} s and TPOT <= {TPOT_SLO * 1000:g} ms.", "",
             "| req/s | replicas | routing | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) | TPOT p99 (ms) | "
             "prompt cached | met SLO | goodput (req/s) |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rate']:g} | {r['replicas']} | {r['mode']} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | "
                     f"{r['tpot_p50'] * 1e3:.0f} | {r['tpot_p99'] * 1e3:.0f} | {r['cached']:.0%} | "
                     f"{r['met']}/{r['requests']} | {r['goodput']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({r["rate"] for r in rows})
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        for mode in dict.fromkeys(r["mode"].split(",")[0] + (" + P/D" if "prefill" in r["mode"] else "")
                                  for r in rows):
            points = [(r["replicas"], r["goodput"]) for r in rows if r["rate"] == rate and
                      r["mode"].split(",")[0] + (" + P/D" if "prefill" in r["mode"] else "") == mode]
            ax.plot(*zip(*points), marker="o", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_title(f"W3 at {rate:g} req/s")
        ax.set_xlabel("replicas")
        ax.set_ylabel("goodput (req/s within SLO)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="10,30,100", help="arrival rates, requests per second")
    p.add_argument("--replicas", default="4,8,16,32,64")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network-gbps", type=float, default=10.0, help="KV transfer bandwidth between machines")
    p.add_argument("--costs", help="a step_costs.json to reuse instead of measuring")
    p.add_argument("--out", default="bench/results/scaling.md")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.costs:
        costs = StepCosts(**json.load(open(args.costs)))
    else:
        costs = measure_step_costs()
        with open("bench/results/step_costs.json", "w") as f:
            json.dump(asdict(costs), f, indent=1)
    from catalog.registry import resolve_model

    tokenizer = resolve_model("smollm2").tokenizer
    encode = lambda text: tuple(tokenizer.encode_chat(text))  # noqa: E731
    rows = simulate(costs, [float(r) for r in args.rates.split(",")], [int(n) for n in args.replicas.split(",")],
                    args.requests, args.seed, args.network_gbps, encode)
    publish(markdown(costs, rows, args), args.out)
    plot(rows, args.out.removesuffix(".md") + ".png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
