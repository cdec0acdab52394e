"""Speculative decoding: draft a few tokens cheaply, verify them in one multi-token step, keep what the
target model would have produced.

A decoding sequence's row in a step is then its last token plus k drafted tokens (BatchRow.num_draft_tokens):
one forward pass gives the k + 1 next-token distributions. `verify` keeps the longest prefix of drafts that
the target accepts and adds one token of its own (the correction at the first rejection, or a bonus token
after k acceptances), so every step emits at least one token. Greedy rows accept a draft when it is the
target's argmax (output identical token for token); sampled rows use the standard rejection rule (accept
draft d with probability p(d), else sample from p with d removed; drafts here are deterministic, q is a point
mass), which leaves the output distribution unchanged. The KV cache rolls back by not counting the
rejected drafts' slots as computed: the next step overwrites them.

Drafts come from `PromptLookup` (n-gram matches in the prompt and the output so far, vLLM's and
llama.cpp's prompt lookup) or from a smaller draft model (runtime/draft_model.py). No torch in the proposer.
"""
from __future__ import annotations

import torch

from operators.requests import SamplingParams
from runtime.acceptance import WINDOW_DRAFTS
from runtime.sampler import distribution, greedy_token

NGRAM_MAX = 3  # longest suffix looked up; the longest match wins
NGRAM_MIN = 2  # a one-token match proposes too much noise for the verify cost it adds


def speculable(seq) -> bool:
    """Rows whose next-token distribution depends only on the logits: penalties and grammars carry
    per-token state that a multi-token verify would have to replay, so those rows decode one at a time."""
    if seq.is_score or seq.constraint is not None:
        return False
    return not seq.request.sampling.shapes_logits


def still_pays(seq, min_acceptance: float) -> bool:
    """Whether a sequence drafts this step: until it has verified WINDOW_DRAFTS drafts, and after that while
    its acceptance over its latest drafts (runtime/acceptance.py: verified or shadowed) stays at or above the
    break-even the optimizer priced (SmartSpec's and vLLM's dynamic speculation: a stretch of output that does not
    quote its prompt stops paying for verification after a few steps, one that does brings it back)."""
    window = seq.acceptance
    return window.drafted < WINDOW_DRAFTS or window.accepted >= min_acceptance * window.drafted


class PromptLookup:
    """Per sequence, an index from each n-gram of its tokens to where its latest occurrence ended, grown
    incrementally as tokens arrive: a lookup is a few dict probes, whatever the sequence's length."""

    proposes_free = True  # so a sequence that stopped drafting keeps scoring proposals (runtime/acceptance.py)

    def __init__(self, ngram_max: int = NGRAM_MAX, ngram_min: int = NGRAM_MIN):
        self.ngram_max, self.ngram_min = ngram_max, ngram_min
        self._index: dict[int, tuple[dict[tuple[int, ...], int], list[int]]] = {}  # seq_id -> (index, [indexed])

    def propose(self, seq_id: int, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix."""
        if k <= 0:
            return []
        index, indexed = self._index.setdefault(seq_id, ({}, [0]))
        # index n-grams ending before the last token: each has a known follower
        for end in range(max(indexed[0], 1), len(tokens)):
            for n in range(self.ngram_min, self.ngram_max + 1):
                if end - n >= 0:
                    index[tuple(tokens[end - n:end])] = end
        indexed[0] = len(tokens)
        for n in range(self.ngram_max, self.ngram_min - 1, -1):
            if len(tokens) >= n and (follow := index.get(tuple(tokens[-n:]))) is not None:
                return tokens[follow:follow + k]
        return []

    def propose_all(self, wanted: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """(seq_id, tokens so far, k) -> drafts of each (the proposers' common interface)."""
        return {seq_id: self.propose(seq_id, tokens, k) for seq_id, tokens, k in wanted}

    def forget(self, seq_id: int) -> None:
        self._index.pop(seq_id, None)


def verify(rows: torch.Tensor, drafts: list[int], params: SamplingParams, generator: torch.Generator | None,
           eos_ids: frozenset[int] = frozenset()) -> list[int]:
    """rows [k + 1, V]: the (processed) logits after the row's last token and after each draft.
    Returns the tokens to emit: the accepted drafts, then the target's own next token."""
    out = []
    for i, draft in enumerate(drafts):
        if params.greedy:
            target = greedy_token(rows[i], params, eos_ids)
            if target != draft:
                return out + [target]
        else:
            probs = distribution(rows[i], params, eos_ids)
            if torch.rand(1, generator=generator).item() >= probs[draft].item():
                probs[draft] = 0.0  # the residual (p - q)+ of a point-mass draft
                return out + [int(torch.multinomial(probs, 1, generator=generator))]
        out.append(draft)
    last = rows[len(drafts)]
    bonus = (greedy_token(last, params, eos_ids) if params.greedy
             else int(torch.multinomial(distribution(last, params, eos_ids), 1, generator=generator)))
    return out + [bonus]


SPECULATIVE_TOKENS = (3, 5, 8)  # the draft lengths the optimizer prices (statistics are kept for each)
SIMULATED_REQUESTS = 256  # a run's statistics come from at most this many of its requests


def simulate_prompt_lookup(prompt: tuple[int, ...], output: list[int], k: int) -> tuple[int, int, int]:
    """(decode steps, drafted, accepted) that prompt lookup with k drafts would have taken to produce `output`
    greedily: exactly what a speculative run does, replayed from the finished tokens. Every generate run (with
    speculation on or off) thereby teaches the optimizer its template's acceptance."""
    lookup, tokens = PromptLookup(), list(prompt) + output[:1]  # the prefill step samples the first token
    steps = drafted = accepted = 0
    i = 1
    while i < len(output):
        drafts = lookup.propose(0, tokens, min(k, len(output) - i - 1))
        run = 0
        while run < len(drafts) and drafts[run] == output[i + run]:
            run += 1
        tokens += output[i : i + run + 1]
        i += run + 1
        steps, drafted, accepted = steps + 1, drafted + len(drafts), accepted + run
    return steps, drafted, accepted


def prompt_lookup_statistics(generations) -> dict[int, tuple[int, int, int, int]]:
    """k -> (output tokens, decode steps, drafted, accepted) over (a sample of) finished generations."""
    stride = max(1, len(generations) // SIMULATED_REQUESTS)
    sample = [g for g in generations[::stride] if len(g.output_token_ids) > 1]
    out = {}
    for k in SPECULATIVE_TOKENS:
        sums = [0, 0, 0, 0]
        for g in sample:
            steps, drafted, accepted = simulate_prompt_lookup(g.prompt_token_ids, list(g.output_token_ids), k)
            for j, v in enumerate((len(g.output_token_ids) - 1, steps, drafted, accepted)):
                sums[j] += v
        if sums[0]:
            out[k] = tuple(sums)
    return out
