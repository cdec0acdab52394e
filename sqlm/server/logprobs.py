"""Per-token log-probabilities for requests that ask for them (OpenAI `logprobs` / `top_logprobs`).

The engine returns sampled tokens, not the distributions they came from, so a request
with logprobs gets a shadow single-sequence forward over the same model that follows
its tokens one by one: prefill the prompt once, then for each sampled token read its
log-probability (and the top alternatives) from the current logits and feed it in.
It runs on the engine thread, costs one extra decode per token of such requests only,
and reports the model's raw distribution (before temperature / top-p), as OpenAI does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from operators import tensor_ops
from operators.llama import LlamaModel


class GrowingKVCache:
    """One sequence's K/V, grown by doubling: memory follows the tokens actually seen."""

    def __init__(self, num_layers: int, capacity: int = 64):
        self.num_layers = num_layers
        self.k: list[torch.Tensor | None] = [None] * num_layers  # [capacity, Hkv, D] each
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0
        self._capacity = capacity

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, end = self.length, self.length + q.shape[0]
        if self.k[layer] is None or end > self.k[layer].shape[0]:
            self._grow(layer, end, k)
        self.k[layer][start:end] = k
        self.v[layer][start:end] = v
        return tensor_ops.causal_attention(q, self.k[layer][:end], self.v[layer][:end], q_start=start)  # [T, Hq, D]

    def _grow(self, layer: int, needed: int, like: torch.Tensor) -> None:
        size = max(self._capacity, needed)
        while size < needed:
            size *= 2
        self._capacity = size
        for store in (self.k, self.v):
            fresh = like.new_zeros((size, *like.shape[1:]))  # [size, Hkv, D]
            if store[layer] is not None:
                fresh[: self.length] = store[layer][: self.length]
            store[layer] = fresh

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first


class LogprobTracker:
    def __init__(self, model: LlamaModel, prompt_token_ids: tuple[int, ...], num_top: int):
        self.model = model
        self.num_top = num_top
        self.cache = GrowingKVCache(model.config.num_layers, capacity=len(prompt_token_ids) + 64)
        self._logits = self._forward(list(prompt_token_ids))  # [V]
        self._unfed: int | None = None  # the last observed token, fed only if another one follows

    @torch.inference_mode()
    def _forward(self, token_ids: list[int]) -> torch.Tensor:
        ids = torch.tensor(token_ids, dtype=torch.long)
        positions = torch.arange(self.cache.length, self.cache.length + len(token_ids))
        hidden = self.model.forward(ids, positions, self.cache)  # [T, H]
        self.cache.advance(len(token_ids))
        return self.model.compute_logits(hidden[-1:])[0].float()  # [V]

    def observe(self, token_id: int) -> TokenLogprobs:
        """The log-probability the model gave `token_id` at this position; then move past it."""
        if self._unfed is not None:
            self._logits = self._forward([self._unfed])
        logprobs = torch.log_softmax(self._logits, dim=-1)  # [V]
        top = ()
        if self.num_top:
            values, ids = torch.topk(logprobs, min(self.num_top, logprobs.numel()))
            top = tuple(zip(ids.tolist(), values.tolist()))
        self._unfed = token_id
        return TokenLogprobs(token_id, float(logprobs[token_id]), top)
