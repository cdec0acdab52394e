"""Per-kernel throughput on SmolLM2's shapes against this machine's measured ceilings.

    python -m bench.kernels [--threads 1] [--out bench/results/kernels.md] [--rounds 7]

Ceilings are measured in the same run, at the same thread count as the kernels: memory bandwidth by a large tensor copy
(read + write bytes), fp32 and bf16 FLOP/s by a 2048^3 torch matmul. Every kernel is
timed interleaved with its torch twin (codegen.measure), minimum over rounds.

"Bandwidth" needs care here: a decoder matrix (0.2-1.1 MB) called again and again stays in
L2, so its GEMV can beat the DRAM copy figure; in decode every layer's weights come from
L3/DRAM instead. Each row therefore also states the read bandwidth of a buffer of its size, warm in
cache (bench.machine.read_bandwidth_gbs): the honest ceiling for that kernel. The
decoder_linears row streams 30 layers' distinct weights through the GEMV, as decode does:
that is the figure to hold against the copy bandwidth.
"""
from __future__ import annotations

import argparse
import os
import time

from bench.threads import pin_threads_from_argv

pin_threads_from_argv()

import torch  # noqa: E402

from bench.machine import ceilings, describe, publish, read_bandwidth_gbs  # noqa: E402
from catalog.model_config import ModelConfig  # noqa: E402
from codegen.measure import measure_kernel_cases  # noqa: E402

SMOLLM2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                      num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


def report(rounds: int) -> str:
    ceil = ceilings()
    lines = [f"Kernels on SmolLM2-135M shapes; {describe()}, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}, 1-min load average {os.getloadavg()[0]:.1f}.",
             "",
             f"Ceilings measured in this run: copy bandwidth {ceil['copy_gbs']:.1f} GB/s (1 GiB, read+write), "
             f"torch fp32 GEMM {ceil['fp32_gflops']:.0f} GFLOP/s, bf16 GEMM {ceil['bf16_gflops']:.0f} GFLOP/s. "
             "'read BW' is a warm read of a buffer the size of the row's weights (L2/L3-resident when small).",
             "",
             "| op | impl | µs/call | GB/s | % of copy BW | % of read BW (GB/s) | GFLOP/s "
             "| speed-up vs torch_fp32/torch |",
             "|---|---|---|---|---|---|---|---|"]
    read_ceiling: dict[int, float] = {}
    for case, timings in measure_kernel_cases(SMOLLM2, rounds):
        base = timings.get("torch_fp32", timings.get("torch"))
        resident = case.weight_bytes or case.bytes
        if resident not in read_ceiling:
            read_ceiling[resident] = read_bandwidth_gbs(resident)
        read = read_ceiling[resident]
        for impl, seconds in timings.items():
            gbps = case.bytes / seconds / 1e9
            lines.append(f"| {case.op} | {impl} | {seconds * 1e6:.1f} | {gbps:.1f} | "
                         f"{100 * gbps / ceil['copy_gbs']:.0f}% | {100 * gbps / read:.0f}% ({read:.0f}) | "
                         f"{case.flops / seconds / 1e9:.1f} | {base / seconds:.2f}x |")
    lines += ["", "Bytes count each input and output once (quantized linears: the GGUF blocks); the torch "
              "linears read fp32/bf16 weights, so their GB/s uses the quantized byte count too "
              "(compare µs, not GB/s, across formats). tvm_gemv: fused VNNI GEMV; tvm_gemm: fused tiled GEMM; "
              "tvm_dequant_*_torch_bf16 / _tvm_bf16: TVM dequantize + torch's bf16 GEMM / codegen's bf16 matmul; tvm_fp32: TVM GEMV on fp32 weights; "
              "tvm_bf16 / torch_bf16: bf16 weights (weight_format = 'bf16') through codegen's bf16 matmul / "
              "oneDNN's prepacked GEMM, bf16 in and out."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch and TVM threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    publish(report(args.rounds), args.out)


if __name__ == "__main__":
    main()
