"""Batch-1 greedy decode latency of SmolLM2 through sqlm's engine: TVM kernels with Q4_1
kept quantized, against the engine's own fp32 torch path and llama.cpp on the same GGUF
file, measured in one run.

    python -m bench.decode_latency [--tokens 64] [--threads 2] [--rounds 3] [--profile] [--context 2000]
                                   [--llama-python bench/.peers/llama/bin/python]

sqlm runs as a user's query does: one request through Engine (scheduler, paged KV cache,
sampler); after the prompt's step, each decode step is timed. llama.cpp runs through
llama-cpp-python in a separate environment (its own interpreter, given by --llama-python)
and is skipped when that interpreter or package is missing.
Prompt: the chat-formatted "What is the capital of France?"; EOS is never sampled; time to first token is the
prompt's prefill (sqlm's prefix cache is off here, llama.cpp starts each round afresh). With `--context N`, a question
after W7's generated document cut to about N tokens: decode over a long context, where attention, not the weights,
is most of a token (llama.cpp then runs with and without its flash attention and reports its better setting).
The engines take turns round after round (the machine is shared); each reports its best
round. `--profile` adds the TVM path's time per operator (wall clock, best round), through the model's forward: the
engine itself runs batch-1 steps as pre-bound kernel calls (codegen.captured_forward), which a timer cannot wrap.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.threads import pin_threads_from_argv

pin_threads_from_argv()

import torch  # noqa: E402



def llama_job(prompt: list[int], tokens: int, flash_attn: bool = False) -> str:
    """The job file bench/peer_scripts/run_llama_cpp.py reads: this prompt decoded for `tokens` tokens."""
    from catalog.registry import resolve_model

    path = Path(tempfile.mkdtemp()) / "job.json"
    path.write_text(json.dumps({"prompts": [prompt], "w4_prompt": prompt, "tokens": 2, "w4_tokens": tokens + 1,
                                "runs": 3, "threads": torch.get_num_threads(), "w4_only": True,
                                "n_ctx": max(512, len(prompt) + tokens + 16), "flash_attn": flash_attn,
                                "eos": sorted(resolve_model("smollm2").tokenizer.eos_token_ids)}))
    return str(path)


def long_prompt(tokenizer, context: int) -> list[int]:
    """A question after W7's document (bench.kv_tiers), cut to about `context` tokens in all, chat-formatted."""
    from bench.kv_tiers import document

    question = "\n\nQuestion: what does the text above say about delivery?"
    words = document(words=context * 2).split()
    lo, hi = 1, len(words)  # the most words whose prompt fits in `context` tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode_chat(" ".join(words[:mid]) + question)) <= context:
            lo = mid
        else:
            hi = mid - 1
    return tokenizer.encode_chat(" ".join(words[:lo]) + question)


def engine_seconds_per_token(engine, prompt_ids, tokens: int, rounds: int = 1,
                            before_decode=lambda: None) -> float:
    """Best over rounds of the mean decode step time of one greedy request (its prompt's step excluded)."""
    return engine_latency(engine, prompt_ids, tokens, rounds, before_decode)[1]


def engine_latency(engine, prompt_ids, tokens: int, rounds: int = 1, before_decode=lambda: None) -> tuple[float, float]:
    """Best over rounds of (seconds to the first token, mean decode step time after it) of one greedy request;
    the first is the prompt's prefill only where the engine's prefix cache is off (else later rounds find it)."""
    from operators.requests import GenerationRequest, SamplingParams

    first = per_token = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        handle = engine.submit(GenerationRequest(prompt_ids, SamplingParams(max_tokens=tokens + 1, temperature=0.0,
                                                                            ignore_eos=True)))
        while not handle.output_token_ids:  # the prompt's step(s) make the first token
            engine.step()
        first = min(first, time.perf_counter() - start)
        before_decode()
        start = time.perf_counter()
        while not handle.finished:
            engine.step()
        per_token = min(per_token, (time.perf_counter() - start) / tokens)
    return first, per_token


class OpTimer:
    """Wraps a model's linears, ops and attention to total wall time per operator."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()

    def wrap(self, name, fn):
        def timed(*args):
            start = time.perf_counter()
            result = fn(*args)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            return result
        return timed

    def instrument(self, model, attention_cls):
        from operators.llama import ModelOps

        for layer in model.layers:
            for attr in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
                lin = getattr(layer, attr)
                setattr(layer, attr, self.wrap(f"linear {attr} {lin.out_features}x{lin.in_features} {lin.weight_format}", lin))
        model.lm_head = self.wrap(f"lm_head {model.lm_head.out_features}x{model.lm_head.in_features} "
                                  f"{model.lm_head.weight_format}", model.lm_head)
        ops = model.ops
        model.ops = ModelOps(rms_norm=self.wrap("rms_norm", ops.rms_norm),
                             add_rms_norm=self.wrap("add + rms_norm", ops.add_rms_norm),
                             silu_mul=self.wrap("silu_mul", ops.silu_mul), name=ops.name)
        attention_cls.attend = self.wrap("attention (RoPE + KV write + kernel)", attention_cls.attend)

    def report(self, total_seconds: float, tokens: int) -> str:
        lines = ["| operator | ms/token | calls/token | µs/call |", "|---|---|---|---|"]
        for name in sorted(self.seconds, key=lambda n: -self.seconds[n]):
            lines.append(f"| {name} | {self.seconds[name] / tokens * 1e3:.2f} | {self.calls[name] / tokens:.0f} | "
                         f"{self.seconds[name] / self.calls[name] * 1e6:.1f} |")
        rest = total_seconds - sum(self.seconds.values()) / tokens
        lines.append(f"| rest (scheduler, batch inputs, embedding, RoPE tables, sampling, Python) | {rest * 1e3:.2f} | | |")
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch and TVM threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--context", type=int, default=0, help="prompt tokens: W7's document cut to this length")
    parser.add_argument("--llama-python", default=str(Path(__file__).parent / ".peers" / "llama" / "bin" / "python"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from bench.machine import peer_environment
    from catalog.registry import default_model_path, resolve_model
    from codegen.model_kernels import build_model
    from runtime.engine import Engine
    from operators.engine_config import EngineConfig
    from runtime.model_runner import KernelPagedAttention

    loaded = resolve_model("smollm2")
    prompt = (long_prompt(loaded.tokenizer, args.context) if args.context
              else loaded.tokenizer.encode_chat("What is the capital of France?"))
    kv_memory = max(64 << 20, 2 * (len(prompt) + args.tokens + 64) * loaded.config.kv_bytes_per_token)
    # no prefix cache: each round prefills the prompt, so its time to first token is a prefill's
    engines = {"sqlm tvm, Q4_1 native": Engine(build_model(loaded, kernels="tvm", weight_format="native"),
                                               loaded.tokenizer, EngineConfig(kv_cache_memory=kv_memory,
                                                                              prefix_cache=False))}
    if not args.skip_torch:
        engines["sqlm torch, fp32"] = Engine(build_model(loaded, kernels="torch", weight_format="fp32"), loaded.tokenizer,
                                             EngineConfig(kv_cache_memory=kv_memory, attention_kernel="torch",
                                                          prefix_cache=False))
    has_llama = os.path.exists(args.llama_python)
    results = {name: float("inf") for name in engines}
    first_token = {name: float("inf") for name in engines}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, engine in engines.items():
            first, per_token = engine_latency(engine, prompt, args.tokens)
            results[name], first_token[name] = min(results[name], per_token), min(first_token[name], first)
        for flash_attn in (False, True) if has_llama and args.context else (False,) if has_llama else ():
            run = subprocess.run([args.llama_python, str(Path(__file__).parent / "peer_scripts" / "run_llama_cpp.py"),
                                  str(default_model_path()), llama_job(prompt, args.tokens, flash_attn)],
                                 capture_output=True, text=True, env=peer_environment(torch.get_num_threads()))
            if run.returncode == 0:
                figures = json.loads(run.stdout.strip().splitlines()[-1])
                key = "llama.cpp (llama-cpp-python), Q4_1"
                results[key] = min(results.get(key, float("inf")), min(figures["w4_seconds_per_token"]))
                first_token[key] = min(first_token.get(key, float("inf")), min(figures["w4_first_token_seconds"]))
            else:
                has_llama = False
                print(f"llama.cpp skipped: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
    torch_fp32 = results.get("sqlm torch, fp32")
    llama = results.get("llama.cpp (llama-cpp-python), Q4_1")
    from bench.machine import describe

    print(f"batch 1, {len(prompt)} prompt tokens, {args.tokens} new tokens, best of {args.rounds} interleaved rounds; "
          f"{describe()}, "
          f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"1-min load average at each round {', '.join(f'{x:.1f}' for x in loads)}")
    print("| engine | ms/token | tokens/s | vs sqlm torch fp32 | vs llama.cpp | time to first token (s) |")
    print("|---|---|---|---|---|---|")
    for name, seconds in results.items():
        vs_torch = f"{torch_fp32 / seconds:.2f}x" if torch_fp32 else "-"
        vs_llama = f"{llama / seconds:.2f}x" if llama else "-"
        print(f"| {name} | {seconds * 1e3:.1f} | {1 / seconds:.1f} | {vs_torch} | {vs_llama} | "
              f"{first_token[name]:.3f} |")
    if args.profile:
        timer = OpTimer()
        engine = engines["sqlm tvm, Q4_1 native"]
        engine.runner.capture_steps = False  # the model's own forward, whose calls the timer can wrap
        timer.instrument(engine.model, KernelPagedAttention)
        best = None

        def reset():
            timer.seconds.clear()
            timer.calls.clear()

        for _ in range(args.rounds):
            seconds = engine_seconds_per_token(engine, prompt, args.tokens, before_decode=reset)
            if best is None or seconds < best[0]:
                best = (seconds, dict(timer.seconds), collections.Counter(timer.calls))
        timer.seconds.update(best[1])
        timer.calls = best[2]
        print(f"\nTVM path per operator, through the model's forward (not the captured calls the engine runs; "
              f"best round, {best[0] * 1e3:.1f} ms/token incl. timer overhead, "
              f"load {os.getloadavg()[0]:.1f}):")
        print(timer.report(best[0], args.tokens))


if __name__ == "__main__":
    main()
