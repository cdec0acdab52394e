"""Engine throughput on W1 (batch chat generation) and W2 (shared-prefix classification), shared/workloads.md.

    python -m bench.engine_throughput                      # W1 + W2, 3 runs each, markdown on stdout
    python -m bench.engine_throughput --w2-rows 1000 --out engine.md

W1: 64 chat prompts x 64 greedy tokens (EOS ignored) through sqlm's engine (fp32 and bf16
weights; --kernels picks the elementwise/attention kernels, TVM by default, and --attention
the attention kernel) and through HF transformers' batched `generate` (fp32, one batch, left padding)
on the same GGUF, same token ids, same run, same thread count. W2: each review row scored
against three labels (one ScoreRequest per label, as classify() does), prefix cache on vs off.
Each engine runs in its own process (model load excluded from timings; peak RSS per process).
Figures are medians of --runs runs; a fresh engine per run, so no run reuses another's cache.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

W1_PROMPTS = [f"Write a short product review for item number {i}. The review should mention price, quality and delivery."
              for i in range(64)]
LABELS = ("positive", "negative", "neutral")


def _peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM: ru_maxrss would include the parent's peak before exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _w1_token_ids(tokenizer, num_prompts: int) -> list[list[int]]:
    return [tokenizer.encode_chat(p) for p in W1_PROMPTS[:num_prompts]]


def _sqlm_model(loaded, args):
    from codegen.model_kernels import build_model

    return build_model(loaded, kernels=args.kernels, weight_format=args.weight_format)


def _engine_config(args, **options):
    from operators.engine_config import EngineConfig

    return EngineConfig(kv_cache_memory=1 << 30, prefill_chunk_tokens=args.chunk, attention_kernel=args.attention,
                        **options)


def worker_w1_sqlm(args) -> dict:
    from catalog.registry import resolve_model
    from runtime.engine import Engine
    from operators.requests import GenerationRequest, SamplingParams

    loaded = resolve_model("smollm2")
    model = _sqlm_model(loaded, args)
    prompts = _w1_token_ids(loaded.tokenizer, args.prompts)
    requests = [GenerationRequest(tuple(p), SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)) for p in prompts]
    config = _engine_config(args)
    times, tokens, stats = [], None, None
    for _ in range(args.runs):
        engine = Engine(model, loaded.tokenizer, config)
        t = time.perf_counter()
        results = engine.generate(requests)
        times.append(time.perf_counter() - t)
        tokens = [r.output_token_ids for r in results]
        stats = engine.stats
        del engine
    return {"times": times, "tokens": tokens, "rss_mb": _peak_rss_mb(), "steps": stats.num_steps,
            "cached_prompt_tokens": stats.num_cached_prompt_tokens, "prompt_tokens": stats.num_prompt_tokens}


def worker_w1_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from catalog.registry import default_model_path, resolve_model

    tokenizer = resolve_model("smollm2").tokenizer
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    prompts = _w1_token_ids(tokenizer, args.prompts)
    width, pad = max(map(len, prompts)), 2
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # [B, width], left padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # [B, width]
    times, tokens = [], None
    for _ in range(args.runs):
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=pad)
        times.append(time.perf_counter() - t)
        tokens = out[:, width:].tolist()
    return {"times": times, "tokens": tokens, "rss_mb": _peak_rss_mb()}


def worker_w2_sqlm(args) -> dict:
    from bench.w2_data import INSTRUCTION, make_table
    from catalog.registry import resolve_model
    from runtime.engine import Engine
    from runtime.llm_ops import classify_prompt, label_continuations
    from operators.requests import ScoreRequest

    loaded = resolve_model("smollm2")
    tokenizer = loaded.tokenizer
    model = _sqlm_model(loaded, args)
    bodies = make_table(args.w2_rows).column("body").to_pylist()
    prompts = [tuple(classify_prompt(tokenizer, INSTRUCTION, body)) for body in bodies]
    continuations = label_continuations(tokenizer, LABELS)
    requests = [ScoreRequest(p, c) for p in prompts for c in continuations]
    shared = len(os.path.commonprefix([list(p) for p in prompts]))
    config = _engine_config(args, prefix_cache=args.prefix_cache == "on")
    times = []
    for _ in range(args.runs):
        engine = Engine(model, tokenizer, config)
        t = time.perf_counter()
        results = engine.generate(requests)
        times.append(time.perf_counter() - t)
        stats = engine.stats
        del engine
    per_row = len(LABELS)
    labels = [LABELS[max(range(per_row), key=lambda j: results[i * per_row + j].logprob)] for i in range(len(prompts))]
    shared_cached = sum(min(r.num_cached_prompt_tokens, shared) for r in results)
    return {"times": times, "labels": labels, "rss_mb": _peak_rss_mb(), "shared_prefix_tokens": shared,
            "shared_prefix_cached_fraction": shared_cached / (shared * len(results)),
            "cached_fraction": stats.num_cached_prompt_tokens / stats.num_prompt_tokens,
            "prompt_tokens": stats.num_prompt_tokens, "computed_prompt_tokens": stats.num_computed_prompt_tokens,
            "requests": len(results)}


WORKERS = {"w1-sqlm": worker_w1_sqlm, "w1-hf": worker_w1_hf, "w2-sqlm": worker_w2_sqlm}


def run_worker(name: str, args, **extra) -> dict:
    cmd = [sys.executable, "-m", "bench.engine_throughput", "--worker", name, "--runs", str(args.runs),
           "--threads", str(args.threads), "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens),
           "--w2-rows", str(args.w2_rows), "--chunk", str(args.chunk), "--kernels", args.kernels,
           "--attention", args.attention]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    print(f"[bench] {name} {extra}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, float]:
    """(sequences identical in full, mean length of the common prefix)."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y))) for x, y in zip(a, b)]
    return same, statistics.mean(prefix)


def _w1_report(args, w1: dict, new_tokens: int) -> list[str]:
    lines = [f"### W1: {args.prompts} chat prompts x {args.new_tokens} greedy tokens (EOS ignored)", "",
             "| engine | tok/s | wall s | peak RSS MB | vs HF |", "|---|---|---|---|---|"]
    hf_rate = None
    if w1["hf-fp32"]:
        hf_rate = new_tokens / statistics.median(w1["hf-fp32"]["times"])
    for name, r in w1.items():
        if r is None:
            continue
        wall = statistics.median(r["times"])
        rate = new_tokens / wall
        ratio = f"{rate / hf_rate:.2f}x" if hf_rate else "-"
        lines.append(f"| {name} | {rate:,.1f} | {wall:.2f} | {r['rss_mb']:,.0f} | {ratio} |")
    lines.append("")
    ref_name = "hf-fp32" if w1["hf-fp32"] else "sqlm-fp32"
    for name in ("sqlm-fp32", "sqlm-bf16"):
        if name == ref_name:
            continue
        same, prefix = agreement(w1[name]["tokens"], w1[ref_name]["tokens"])
        lines.append(f"- {name} vs {ref_name} greedy tokens: {same}/{args.prompts} prompts identical over all "
                     f"{args.new_tokens} tokens; mean common prefix {prefix:.1f} tokens.")
    if w1["hf-fp32"]:
        same, prefix = agreement(w1["sqlm-bf16"]["tokens"], w1["sqlm-fp32"]["tokens"])
        lines.append(f"- sqlm-bf16 vs sqlm-fp32: {same}/{args.prompts} identical; mean common prefix {prefix:.1f} tokens.")
    return lines


def main(args) -> str:
    import torch

    from bench import machine

    torch.set_num_threads(args.threads)
    ceilings = machine.ceilings()
    from catalog.registry import resolve_model

    flops_per_token = resolve_model("smollm2").config.flops_per_token
    new_tokens = args.prompts * args.new_tokens
    w1 = {} if args.skip_w1 else {"hf-fp32": None if args.skip_hf else run_worker("w1-hf", args),
                                  "sqlm-fp32": run_worker("w1-sqlm", args, weight_format="fp32"),
                                  "sqlm-bf16": run_worker("w1-sqlm", args, weight_format="bf16")}
    w2 = {} if args.skip_w2 else {mode: run_worker("w2-sqlm", args, weight_format=args.w2_weight_format, prefix_cache=mode)
                                  for mode in ("on", "off")}

    lines = [f"## Engine throughput (bench/engine_throughput.py)", "",
             f"Machine: {machine.describe()}. Ceilings measured in the same run: copy "
             f"{ceilings['copy_gbs']:.1f} GB/s, fp32 matmul {ceilings['fp32_gflops']:.0f} GFLOP/s, bf16 matmul "
             f"{ceilings['bf16_gflops']:.0f} GFLOP/s -> batched bounds {ceilings['fp32_gflops'] * 1e9 / flops_per_token:,.0f} "
             f"tok/s (fp32), {ceilings['bf16_gflops'] * 1e9 / flops_per_token:,.0f} tok/s (bf16). Medians of {args.runs} runs.", "",
             ]
    if w1:
        lines += _w1_report(args, w1, new_tokens)
    if not w2:
        return "\n".join(lines)
    lines += ["", f"### W2: {args.w2_rows} review rows x {len(LABELS)} labels scored ({args.w2_weight_format} weights)", "",
              "| prefix cache | rows/s | wall s | prompt tokens from cache | shared-prefix tokens from cache |",
              "|---|---|---|---|---|"]
    for mode, r in w2.items():
        wall = statistics.median(r["times"])
        lines.append(f"| {mode} | {args.w2_rows / wall:,.1f} | {wall:.2f} | {r['cached_fraction']:.1%} | "
                     f"{r['shared_prefix_cached_fraction']:.1%} |")
    speedup = statistics.median(w2["off"]["times"]) / statistics.median(w2["on"]["times"])
    same_labels = sum(a == b for a, b in zip(w2["on"]["labels"], w2["off"]["labels"]))
    lines += ["", f"- Prefix cache on is {speedup:.2f}x faster end to end; shared prefix = {w2['on']['shared_prefix_tokens']} "
              f"tokens (chat template + instruction) of {w2['on']['prompt_tokens'] / w2['on']['requests']:.0f} per request; "
              f"labels identical on/off for {same_labels}/{args.w2_rows} rows.", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--w2-rows", type=int, default=200)
    p.add_argument("--w2-weight-format", default="bf16")
    p.add_argument("--chunk", type=int, default=2048, help="prefill_chunk_tokens (per-step token budget)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-w1", action="store_true")
    p.add_argument("--skip-w2", action="store_true")
    p.add_argument("--out")
    p.add_argument("--worker", choices=sorted(WORKERS))
    p.add_argument("--weight-format", default="bf16")
    p.add_argument("--kernels", default="tvm", choices=["tvm", "torch"], help="sqlm's elementwise kernels")
    p.add_argument("--attention", default="tvm", choices=["tvm", "torch"], help="sqlm's attention kernel")
    p.add_argument("--prefix-cache", default="on")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
    else:
        from bench.machine import publish

        publish(main(args), args.out)
