"""llama.cpp (llama-cpp-python) on the job bench/peers.py describes: batch-1 decode (W4) and one prompt at a time.

    python run_llama_cpp.py MODEL.gguf JOB.json  ->  {"w4_seconds_per_token": [...], "w4_first_token_seconds": [...],
                                                     "batches": {"1": {"times": [...], ...}}}

llama-cpp-python's Llama runs one sequence; W1's prompts would go one after another at the batch-1 rate, so only
batch 1 is measured. Decode is timed token by token after the prompt's eval (EOS masked), as W4 asks.
"""
import json
import sys
import time

import numpy as np
from llama_cpp import Llama

path, job = sys.argv[1], json.load(open(sys.argv[2]))
llm = Llama(model_path=path, n_ctx=job.get("n_ctx", 512), n_threads=job["threads"], n_threads_batch=job["threads"],
            n_batch=512, flash_attn=job.get("flash_attn", False), verbose=False)
EOS = job["eos"]


def greedy(prompt: list[int], tokens: int) -> tuple[float, float, list[int], float]:
    """(seconds for the prompt and all tokens, seconds per decoded token after the first, tokens, seconds to the
    first token)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    out, first = [], None
    for _ in range(tokens):
        # the last token's logits (Llama.scores holds them only with logits_all, which computes every row's)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
        logits[EOS] = -1e30  # every EOS id: W4 runs all its tokens
        out.append(int(logits.argmax()))
        if first is None:
            first = time.perf_counter()
        if len(out) < tokens:
            llm.eval([out[-1]])
    end = time.perf_counter()
    return end - start, (end - first) / max(tokens - 1, 1), out, first - start


greedy(job["w4_prompt"], 8)  # warm-up
w4_runs = [greedy(job["w4_prompt"], job["w4_tokens"]) for _ in range(job["runs"])]
w4 = {"w4_seconds_per_token": [r[1] for r in w4_runs], "w4_first_token_seconds": [r[3] for r in w4_runs]}
if job.get("w4_only"):  # bench/peers.py's alternating W4 rounds
    print(json.dumps(w4))
    sys.exit()
batch1 = [greedy(job["prompts"][0], job["tokens"]) for _ in range(job["runs"])]
print(json.dumps({**w4, "batches": {"1": {"times": [r[0] for r in batch1], "tokens": job["tokens"],
                                          "outputs": [batch1[0][2]]}}}))
