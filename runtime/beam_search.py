"""Beam search over the engine, as vLLM runs it: every step, each live beam asks for one token's logprobs.

Each step submits one request per live beam (its prompt plus the beam's tokens, one new
token, the 2 x width most likely alternatives), so all beams of all prompts share the
engine's continuous batch; the radix prefix cache hands every beam its prompt's and its
parent's KV blocks (shared by reference count), so a step computes about one token a beam.
Candidates are ranked by cumulative log-probability; a candidate ending in EOS is a
finished beam. The search stops when `width` beams have finished or none is left to
extend, and the results are ranked by cum_logprob / length ** length_penalty (vLLM's
beam score).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from operators.requests import GenerationRequest, GenerationResult, SamplingParams, TokenLogprobs


@dataclass(frozen=True)
class Beam:
    tokens: tuple[int, ...]  # generated tokens (a finished beam's EOS included)
    logprob: float  # their summed log-probability under the model
    finished: bool = False
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token, with the alternatives the step saw

    def score(self, length_penalty: float) -> float:
        return self.logprob / (max(1, len(self.tokens)) ** length_penalty)


def beam_search(run: Callable[[list[GenerationRequest]], list[GenerationResult]], prompts: list[tuple[int, ...]],
                width: int, max_tokens: int, eos_ids: frozenset[int], length_penalty: float = 1.0,
                priority: int = 0, cancelled: Callable[[], bool] = lambda: False) -> list[list[Beam]]:
    """The `width` best beams of each prompt, best first. run: the engine's blocking generate. `cancelled` is
    asked before each step (a server's client that went away): once it says so, the search stops where it is."""
    if width < 1:
        raise ValueError(f"beam width must be >= 1, got {width}")
    step_params = SamplingParams(max_tokens=1, logprobs=2 * width)
    live: list[list[Beam]] = [[Beam((), 0.0)] for _ in prompts]
    done: list[list[Beam]] = [[] for _ in prompts]
    for _ in range(max_tokens):
        asks = [(p, beam) for p, beams in enumerate(live) for beam in beams]
        if not asks or cancelled():
            break
        results = run([GenerationRequest(prompts[p] + beam.tokens, step_params, priority) for p, beam in asks])
        candidates: list[list[Beam]] = [[] for _ in prompts]
        for (p, beam), result in zip(asks, results):
            step = result.logprobs[0]
            for token, logprob in step.top:
                candidates[p].append(Beam(beam.tokens + (token,), beam.logprob + logprob, token in eos_ids,
                                          beam.logprobs + (TokenLogprobs(token, logprob, step.top),)))
        for p, found in enumerate(candidates):
            live[p] = []
            for c in sorted(found, key=lambda b: -b.logprob):
                if len(live[p]) == width or len(done[p]) >= width:
                    break
                (done[p] if c.finished else live[p]).append(c)
            if len(done[p]) >= width:
                live[p] = []
    return [sorted(done[p] + live[p], key=lambda b: -b.score(length_penalty))[:width] for p in range(len(prompts))]


def text_of(beam: Beam, tokenizer) -> str:
    """A beam's text, without its EOS."""
    return tokenizer.decode([t for t in beam.tokens if t not in tokenizer.eos_token_ids])
