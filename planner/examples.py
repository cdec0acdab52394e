"""Small plans and a model-free optimizer context, for the rules' doctests and unit tests.

>>> p = chain(scan("t", id=[1, 2], body=["a", "b"]), generate("'Hi ' || \\"t.body\\""))
>>> print(p.describe())
Project
  Generate
    Scan
"""
from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pyarrow as pa
from sqlglot import exp, parse_one

from catalog.hardware import HardwareProfile
from catalog.model_config import ModelConfig
from catalog.settings import Settings
from catalog.sources import TableSource
from operators import logical as L
from planner.context import ModelFacts, OptimizerContext
from planner.graph import Plan
from planner.statistics import Statistics
from operators.requests import SamplingParams

# SmolLM2-135M's shape, so costs in examples are realistic without loading it
SMOLLM2_CONFIG = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                             num_kv_heads=3, head_dim=64, max_position_embeddings=8192, tie_word_embeddings=True)
SMOLLM2_FACTS = ModelFacts("smollm2", SMOLLM2_CONFIG, chat_prefix_tokens=24, chat_suffix_tokens=6,
                           tokens_per_char=0.22,
                           weight_bytes=MappingProxyType({"fp32": 651306240, "bf16": 325653120, "native": 209822976}),
                           weight_formats=("native", "fp32", "bf16"),
                           linear_formats=MappingProxyType({"qkv": "Q4_1", "o": "Q4_1", "gate_up": "Q4_1",
                                                            "down": "Q4_1", "lm_head": "Q8_0"}))
# a 2-core machine's measured ceilings (catalog.hardware.measure on the development box)
EXAMPLE_HARDWARE = HardwareProfile(copy_bandwidth=6.2e9, fp32_flops=3.4e10, bf16_flops=1.1e11,
                                   op_overhead_s=8e-6, threads=2, description="example 2-core machine",
                                   kv_host_restore_rate=3.5e8, kv_disk_restore_rate=5.8e8)
# the same machine where TVM builds: its fused Q4_1 kernels, the bf16 prefill path (dequantize ~2.5 G
# weights/s, then AMX bf16 GEMM ~1.5e11 weights x tokens/s: catalog.hardware.measure_bf16_prefill) and both
# attention backends timed (bench/results/kernels.md, 2 threads: TVM's paged kernel leads in decode, torch's
# SDPA in long prefill)
EXAMPLE_TVM_HARDWARE = replace(EXAMPLE_HARDWARE, quant_gemv_rate_t1=3.0e10, quant_gemv_rate_t4=1.7e10,
                               quant_gemm_unpack_rate=8e9, quant_gemm_rate=4.5e10,
                               quant_dequant_bf16_rate=2.5e9, quant_bf16_gemm_rate=1.5e11,
                               attention_tvm_decode_flops=5.4e9, attention_tvm_prefill_flops=1.04e10,
                               attention_torch_decode_flops=1.8e9, attention_torch_prefill_flops=1.68e10)


def context(settings: Settings | None = None, **values: str) -> OptimizerContext:
    s = settings or Settings()
    for k, v in values.items():
        s = s.with_value(k, v)
    return OptimizerContext(s, EXAMPLE_HARDWARE, Statistics(None), MappingProxyType({"smollm2": SMOLLM2_FACTS}))


def scan(alias: str, **columns: list) -> L.Scan:
    table = pa.table(columns)
    source = TableSource("arrow", alias, table.schema, table=table, row_count=table.num_rows,
                         fingerprint=f"example:{alias}")
    return L.Scan(source, alias, tuple(columns))


def col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def expr(sql: str) -> exp.Expr:
    return parse_one(sql)


def generate(prompt_sql: str, output: str = "__llm_0", **sampling) -> L.Generate:
    return L.Generate("smollm2", expr(prompt_sql), SamplingParams(**{"max_tokens": 16, **sampling}), True, output)


def classify(text_sql: str, labels=("positive", "negative"), output: str = "__llm_0",
             instruction: str = "Is this review positive or negative?") -> L.Classify:
    return L.Classify("smollm2", expr(text_sql), tuple(labels), instruction, output)


def where(*predicates: str) -> L.Filter:
    return L.Filter(tuple(expr(p) for p in predicates))


def chain(*ops) -> Plan:
    """Bottom-first operators, topped with the identity Project the binder always puts at the root."""
    plan = Plan.chain(*ops)
    names = plan.columns(plan.root)
    top = plan.insert_above(plan.root, L.Project(tuple((n, col(n)) for n in names)))
    plan.root = top
    plan.output_names = names
    return plan
