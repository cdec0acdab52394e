"""Batch-1 greedy decode latency of SmolLM2: sqlm (TVM kernels, Q4_1 kept quantized) vs
sqlm's own fp32 torch path vs llama.cpp on the same GGUF file, measured in one run.

    python -m bench.decode_latency [--tokens 64] [--llama-python /work/bench-venv/bin/python]

llama.cpp runs through llama-cpp-python in a separate environment (its own interpreter,
given by --llama-python) and is skipped when that interpreter or package is missing.
Prompt: the chat-formatted "What is the capital of France?"; EOS is never sampled.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import torch

LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
path, prompt_ids, tokens, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=512, n_threads=threads, n_batch=512, verbose=False)
best = float("inf")
for _ in range(3):
    llm.reset()
    llm.eval(prompt_ids)
    start = time.perf_counter()
    for _ in range(tokens):
        logits = llm.scores[llm.n_tokens - 1]
        logits[2] = -1e30
        llm.eval([int(logits.argmax())])
    best = min(best, (time.perf_counter() - start) / tokens)
print(json.dumps({"seconds_per_token": best}))
"""


@torch.inference_mode()
def sqlm_seconds_per_token(model, cache_factory, prompt_ids, tokens: int, eos_id: int) -> float:
    best = float("inf")
    for _ in range(3):
        cache = cache_factory()
        hidden = model.forward(torch.tensor(prompt_ids), torch.arange(len(prompt_ids)), cache)
        cache.advance(len(prompt_ids))
        start = time.perf_counter()
        for _ in range(tokens):
            logits = model.compute_logits(hidden[-1:])[0]
            logits[eos_id] = float("-inf")
            token = int(logits.argmax())
            hidden = model.forward(torch.tensor([token]), torch.tensor([cache.length]), cache)
            cache.advance(1)
        best = min(best, (time.perf_counter() - start) / tokens)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--llama-python", default="/work/bench-venv/bin/python")
    args = parser.parse_args()

    from catalog.registry import default_model_path, resolve_model
    from codegen.attention import TvmSequenceKVCache
    from codegen.model_kernels import build_model
    from operators.llama import ContiguousKVCache
    from operators.llama import build_model as build_torch_model

    loaded = resolve_model("smollm2")
    prompt = loaded.tokenizer.encode_chat("What is the capital of France?")
    length = len(prompt) + args.tokens + 1
    eos = min(loaded.tokenizer.eos_token_ids)
    results = {}
    tvm_model = build_model(loaded, kernels="tvm", weight_format="native")
    results["sqlm tvm, Q4_1 native"] = sqlm_seconds_per_token(
        tvm_model, lambda: TvmSequenceKVCache(loaded.config, length), prompt, args.tokens, eos)
    torch_model = build_torch_model(loaded, "fp32")
    results["sqlm torch, fp32"] = sqlm_seconds_per_token(
        torch_model, lambda: ContiguousKVCache(loaded.config, length), prompt, args.tokens, eos)
    if os.path.exists(args.llama_python):
        run = subprocess.run([args.llama_python, "-c", LLAMA_SCRIPT, str(default_model_path()), json.dumps(prompt),
                              str(args.tokens), str(torch.get_num_threads())], capture_output=True, text=True)
        if run.returncode == 0:
            results["llama.cpp (llama-cpp-python), Q4_1"] = json.loads(run.stdout.strip().splitlines()[-1])["seconds_per_token"]
        else:
            print(f"llama.cpp skipped: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
    print(f"| engine | ms/token | tokens/s |  (batch 1, {args.tokens} new tokens, best of 3, "
          f"torch threads {torch.get_num_threads()}, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')})")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {1 / seconds:.1f} |")


if __name__ == "__main__":
    main()
