"""Next-token choice per request: greedy, or temperature / top-k / top-p with a per-request generator."""
from __future__ import annotations

import torch

from operators.requests import SamplingParams
from operators.tensor_ops import argmax_rows


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A seeded generator makes sampling reproducible: same seed, same tokens."""
    if params.greedy:
        return None
    g = torch.Generator()
    g.manual_seed(params.seed if params.seed is not None else torch.seed())
    return g


def _without_eos(row: torch.Tensor, eos_ids: frozenset[int]) -> torch.Tensor:
    """A copy of one row [V] with the EOS tokens masked out."""
    row = row.clone()
    row[sorted(eos_ids)] = float("-inf")
    return row


def distribution(logits: torch.Tensor, params: SamplingParams, eos_ids: frozenset[int] = frozenset()) -> torch.Tensor:
    """logits [V] -> the probabilities [V] a non-greedy request samples from: temperature, top-k, min_p,
    top-p, and ignore_eos's masking, in vLLM's order. Speculative verification accepts drafts against it.
    Always a distribution, whatever the logits and parameters: NaN logits count as -inf, +inf ones (a tiny
    repetition penalty divides by it) as the largest float, the best token always stays (top_p as small as
    fp32 rounds to 0 included), and scores are taken relative to the best before the temperature divides them."""
    if params.ignore_eos and eos_ids:
        logits = _without_eos(logits, eos_ids)
    scores = torch.nan_to_num(logits.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    best = scores.max()
    if best == float("-inf"):
        raise ValueError("every token is excluded: no distribution to sample from")
    scores = (scores - best) / params.temperature  # <= 0, the best exactly 0
    if params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.min_p > 0.0:  # drop what is less likely than min_p x the most likely token (vLLM's min_p)
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        outside[0] = False
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return probs


def greedy_token(logits: torch.Tensor, params: SamplingParams, eos_ids: frozenset[int] = frozenset()) -> int:
    return argmax_rows(logits[None], [eos_ids if params.ignore_eos else ()])[0]


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
               eos_ids: frozenset[int] = frozenset()) -> int:
    """logits [V] -> token id. ignore_eos masks the EOS tokens out (llama.cpp's and HF
    min_new_tokens' meaning): the sequence runs to max_tokens with the best non-EOS token."""
    if params.greedy:
        return greedy_token(logits, params, eos_ids)
    return int(torch.multinomial(distribution(logits, params, eos_ids), 1, generator=generator))


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           eos_ids: frozenset[int] = frozenset()) -> list[int]:
    """logits [B, V] -> B token ids. The greedy rows' argmax in one call (operators.tensor_ops.argmax_rows: a
    row masks its EOS only where one won)."""
    greedy = [i for i, p in enumerate(params) if p.greedy]
    rows = logits if len(greedy) == len(params) else logits[greedy]  # (no copy when every row is greedy)
    best = dict(zip(greedy, argmax_rows(rows, [eos_ids if params[i].ignore_eos else () for i in greedy])))
    return [best[i] if i in best else sample_one(logits[i], p, generators[i], eos_ids) for i, p in enumerate(params)]
