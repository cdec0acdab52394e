"""HF transformers on the job bench/peers.py describes: left-padded batched `generate`, fp32, EOS suppressed.

    python run_hf.py MODEL.gguf JOB.json  ->  {"batches": {...}, "w4_seconds_per_token": [...]}

A script rather than a bench module: bench's package sets sqlm's OpenMP policy, which HF should not run under.
The GGUF is dequantized to fp32 by transformers (its only way to load it). W4's decode rate is the extra time of a
W4_TOKENS-token over a 1-token generate, per extra token.
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, job = sys.argv[1], json.load(open(sys.argv[2]))
torch.set_num_threads(job["threads"])
folder, name = path.rsplit("/", 1)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
pad = job["eos"][0]


def generate(prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # [B, width], left padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=pad)
    return time.perf_counter() - start, out[:, width:].tolist()


generate(job["warmup"], 4)
batches = {}
for batch in job["batches"]:
    runs = [generate(job["prompts"][:batch], job["tokens"]) for _ in range(job["runs"])]
    batches[str(batch)] = {"times": [t for t, _ in runs], "tokens": batch * job["tokens"], "outputs": runs[0][1]}
w4 = []
for _ in range(0 if job.get("w1_only") else job["runs"]):
    short, _ = generate([job["w4_prompt"]], 1)
    long, _ = generate([job["w4_prompt"]], job["w4_tokens"])
    w4.append((long - short) / (job["w4_tokens"] - 1))
print(json.dumps({"batches": batches, "w4_seconds_per_token": w4}))
