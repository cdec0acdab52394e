"""Steps of a few rows run as pre-bound kernel calls (codegen.captured_forward): the same logits, to the bit, as the
model's own forward over the same kernels, for one sequence and for a ragged batch, step after step."""
from __future__ import annotations

import pytest
import torch

from catalog.loader import load_model
from codegen.kernel_set import kernel_set
from codegen.model_kernels import build_model
from runtime.batch import BatchRow, ScheduledBatch
from runtime.model_runner import ModelRunner


@pytest.fixture(scope="module")
def tvm_tiny(tiny_llama):
    """The tiny random Llama on TVM kernels, its GGUF blocks kept quantized."""
    return build_model(load_model(tiny_llama.gguf_path), kernels="tvm", weight_format="native")


def steps() -> list[ScheduledBatch]:
    """Prefill 5 and 3 tokens of two sequences, then decode both, then sequence 0 alone: three shapes."""
    a, b = (0, 1), (2, 3)  # block tables, 16-token blocks
    return [ScheduledBatch((BatchRow(0, (5, 17, 42, 99, 3), 0, a, (4,)), BatchRow(1, (7, 64, 250), 0, b, (2,)))),
            ScheduledBatch((BatchRow(0, (11,), 5, a, (0,)), BatchRow(1, (12,), 3, b, (0,)))),
            *[ScheduledBatch((BatchRow(0, (13 + i,), 6 + i, a, (0,)),)) for i in range(14)]]  # past a block's end


def logits_of(model, capture: bool, kv_cache_dtype: str = "fp32") -> tuple[list[torch.Tensor], ModelRunner]:
    runner = ModelRunner(model, num_blocks=8, block_size=16, kv_cache_dtype=kv_cache_dtype,
                         attention=kernel_set("cpu").attention())
    runner.capture_steps = capture
    return [runner.run(step).all() for step in steps()], runner


def test_captured_steps_give_the_forward_pass_logits_bit_for_bit(tvm_tiny):
    reference, _ = logits_of(tvm_tiny, capture=False)
    captured, runner = logits_of(tvm_tiny, capture=True)
    assert all(torch.equal(a, b) for a, b in zip(reference, captured))
    # the 8-row prefill step runs the forward pass: the tiny model's fp32 linears use torch's GEMM above 4 rows
    assert {shape: c is not None for shape, c in runner._captures.items()} == {(8, 2): False, (2, 2): True,
                                                                             (1, 1): True}


def test_what_is_not_one_kernel_per_operator_runs_the_forward_pass(tvm_tiny, tiny_llama):
    _, int8 = logits_of(tvm_tiny, capture=True, kv_cache_dtype="int8")  # torch quantizes int8 K/V writes
    from operators.llama import build_model as build_torch_model

    _, on_torch = logits_of(build_torch_model(load_model(tiny_llama.gguf_path), "fp32"), capture=True)
    assert int8._captures and on_torch._captures
    assert all(c is None for c in [*int8._captures.values(), *on_torch._captures.values()])
