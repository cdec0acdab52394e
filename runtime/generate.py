"""The reference generation loop: one sequence, contiguous KV cache, no batching.

The ground truth that the engine's batched, paged, chunked paths must reproduce.
"""
from __future__ import annotations

import uuid

import torch

from operators.llama import ContiguousKVCache, LlamaModel
from runtime.errors import check_context
from runtime.logprobs import token_logprobs
from operators.requests import GenerationRequest, GenerationResult
from runtime.sampler import make_generator, sample_one
from runtime.stop import find_stop, finish_reason
from catalog.tokenizer import IncrementalDetokenizer, Tokenizer


@torch.inference_mode()
def generate(model: LlamaModel, tokenizer: Tokenizer, request: GenerationRequest, on_text=None) -> GenerationResult:
    params = request.sampling
    prompt = list(request.prompt_token_ids)
    context = model.config.max_position_embeddings
    check_context(len(prompt), params.max_tokens, context)
    max_new = min(params.max_tokens, context - len(prompt))
    cache = ContiguousKVCache(model.config, len(prompt) + max_new)
    generator = make_generator(params)
    detok = IncrementalDetokenizer(tokenizer)
    output: list[int] = []
    logprobs = [] if params.logprobs is not None else None
    reason = "length" if max_new == 0 else None
    next_input = prompt
    while reason is None:
        ids = torch.tensor(next_input, dtype=torch.long)
        positions = torch.arange(cache.length, cache.length + len(next_input))
        hidden = model.forward(ids, positions, cache)  # [T, H]
        cache.advance(len(next_input))
        raw = model.compute_logits(hidden[-1:])  # [1, V]
        token = sample_one(raw[0], params, generator, tokenizer.eos_token_ids)
        output.append(token)
        if logprobs is not None:
            logprobs += token_logprobs(raw, [token], [params.logprobs])
        reason = finish_reason(token, len(output), params, tokenizer.eos_token_ids)
        if reason == "stop":
            break
        delta = detok.push(token)
        if params.stop and (cut := find_stop(detok.text, params.stop, len(detok.text) - len(delta))) is not None:
            detok.text = detok.text[:cut]
            reason = "stop"
        elif on_text and delta:
            on_text(delta)
        if len(output) >= max_new:
            reason = reason or "length"
        next_input = [token]
    return GenerationResult(
        request_id=request.request_id or uuid.uuid4().hex,
        prompt_token_ids=tuple(prompt),
        output_token_ids=output,
        text=detok.text,
        finish_reason=reason,
        logprobs=logprobs,
    )
