"""What changes a step's logits before sampling: penalties, logit bias, structured-output masks.

Applied to a copy of the constrained rows only (the model's own logits stay as they are
for logprobs, which OpenAI and vLLM report before processing). Semantics are vLLM's:
presence and frequency penalties count the tokens generated so far, the repetition
penalty looks at prompt and output alike (a positive logit is divided by it, a negative
one multiplied), and logit_bias adds to the named tokens' logits.
"""
from __future__ import annotations

import torch

from runtime.structured import allowed_tokens


def process(rows: torch.Tensor, seqs, masks: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """rows [B, V] logits of seqs (runtime.sequence.Sequence) -> rows, or a processed copy when any asks.
    masks: seq_id -> allowed tokens [V], computed ahead (beside the forward pass); others are computed here."""
    todo = [i for i, s in enumerate(seqs) if s.constraint is not None or s.request.sampling.shapes_logits]
    if not todo:
        return rows
    rows = rows.clone()
    for i in todo:
        seq, row = seqs[i], rows[i]
        p = seq.request.sampling
        if p.shapes_logits:
            _penalize(row, seq, p)
        if seq.constraint is not None:
            allowed = (masks or {}).get(seq.seq_id)
            allowed = allowed_tokens(seq.constraint, row.shape[0]) if allowed is None else allowed[:row.shape[0]]
            row.masked_fill_(~allowed, float("-inf"))
    return rows


def _penalize(row: torch.Tensor, seq, p) -> None:
    vocab = row.shape[0]
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted({t for t in seq.token_ids if t < vocab}), dtype=torch.long)
        if seen.numel():
            values = row[seen]
            row[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if p.presence_penalty or p.frequency_penalty:
        output = torch.tensor([t for t in seq.output_token_ids if t < vocab], dtype=torch.long)
        if output.numel():
            counts = torch.bincount(output, minlength=vocab).to(row.dtype)  # [V]
            row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    for token, bias in p.logit_bias:
        if 0 <= token < vocab:
            row[token] += bias
