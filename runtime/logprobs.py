"""Log-probabilities of the tokens a step chose, for the requests that asked (SamplingParams.logprobs).

They are log_softmax of the model's raw logits: before temperature, top-k / top-p and
ignore_eos masking, as OpenAI and vLLM report them. Only the rows that asked pay for the
log_softmax; the engine and the reference loop both call this, so they agree by construction
and the tests check both against a plain forward pass.
"""
from __future__ import annotations

import torch

from operators.requests import TokenLogprobs


def token_logprobs(logits: torch.Tensor, token_ids: list[int], num_top: list[int]) -> list[TokenLogprobs]:
    """logits [B, V] (raw), the B chosen tokens, and how many alternatives each row wants."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
    rows = torch.arange(len(token_ids), device=logprobs.device)
    chosen = logprobs[rows, torch.tensor(token_ids, device=logprobs.device)].tolist()  # [B]
    k = min(max(num_top, default=0), logprobs.shape[-1])
    top_values, top_ids = ([], []) if k == 0 else (t.tolist() for t in torch.topk(logprobs, k))  # [B, k] each
    out = []
    for i, (token, logprob, n) in enumerate(zip(token_ids, chosen, num_top)):
        top = tuple(zip(top_ids[i][:n], top_values[i][:n])) if n else ()
        out.append(TokenLogprobs(token, logprob, top))
    return out
