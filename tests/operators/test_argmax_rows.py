"""Greedy sampling's argmax over logit rows, with excluded ids: the masked torch.argmax, ties and NaN included."""
import pytest
import torch

from operators.tensor_ops import argmax_rows


def masked_torch_argmax(logits: torch.Tensor, excluded) -> list[int]:
    masked = logits.clone()
    for row, ids in enumerate(excluded):
        masked[row, sorted(ids)] = float("-inf")
    return torch.argmax(masked, dim=-1).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_masked_torch_argmax_with_ties_and_exclusions(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, 6, (8, 50), generator=g).float()  # few values: many ties
    best = torch.argmax(logits, dim=-1).tolist()
    excluded = [set(), {best[1]}, {best[2], 0, 49}, set(range(0, 50, 2)), {best[4]} | set(range(10)), set(),
                {7}, set(range(49))]
    assert argmax_rows(logits, excluded) == masked_torch_argmax(logits, excluded)


def test_nan_ranks_above_every_number_as_in_torch():
    logits = torch.tensor([[1.0, float("nan"), 3.0, float("nan")], [float("inf"), 2.0, float("nan"), 0.0]])
    assert argmax_rows(logits, [set(), set()]) == torch.argmax(logits, dim=-1).tolist() == [1, 2]
    assert argmax_rows(logits, [{1}, {2}]) == [3, 0]


def test_takes_a_non_contiguous_or_bf16_view():
    logits = torch.randn(6, 40)
    assert argmax_rows(logits[::2], [()] * 3) == torch.argmax(logits[::2], dim=-1).tolist()
    half = logits.to(torch.bfloat16)
    assert argmax_rows(half, [()] * 6) == torch.argmax(half.float(), dim=-1).tolist()
