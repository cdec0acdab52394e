"""Next-token choice per request: greedy, or temperature / top-k / top-p with a per-request generator."""
from __future__ import annotations

import torch

from runtime.requests import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A seeded generator makes sampling reproducible: same seed, same tokens."""
    if params.greedy:
        return None
    g = torch.Generator()
    g.manual_seed(params.seed if params.seed is not None else torch.seed())
    return g


def suppress_eos(logits: torch.Tensor, params: list[SamplingParams], eos_ids: frozenset[int]) -> torch.Tensor:
    """ignore_eos masks the EOS tokens out (llama.cpp's and HF min_new_tokens' meaning): the
    sequence runs to max_tokens with the best non-EOS token at each step. logits [B, V]; a masked copy
    is returned when any row asks for it (the input may be an inference tensor)."""
    rows = [i for i, p in enumerate(params) if p.ignore_eos]
    if rows and eos_ids:
        logits = logits.clone()
        logits[torch.tensor(rows)[:, None], torch.tensor(sorted(eos_ids))[None, :]] = float("-inf")
    return logits


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """logits [V] fp32 -> token id."""
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """logits [B, V] -> B token ids; greedy rows in one vectorized argmax."""
    greedy_ids = torch.argmax(logits, dim=-1).tolist()
    return [greedy_ids[i] if p.greedy else sample_one(logits[i], p, generators[i]) for i, p in enumerate(params)]
