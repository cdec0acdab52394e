"""One request's life in the engine: its tokens, how many are in the KV cache, its blocks, its status.

No torch here; the scheduler and the block manager work on these objects.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from operators.requests import GenerationRequest, ScoreRequest, TokenLogprobs
from runtime.acceptance import AcceptanceWindow
from runtime.stop import find_stop, finish_reason


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class TokenEvent:
    """What a streaming callback receives for each new token."""

    request_id: str
    token_id: int
    text: str  # newly complete text ("" while a multi-byte character or a stop string is pending)
    finish_reason: str | None  # set on the sequence's last event
    logprobs: TokenLogprobs | None = None  # when the request's SamplingParams.logprobs asked


class Sequence:
    def __init__(self, seq_id: int, request_id: str, request: GenerationRequest | ScoreRequest,
                 max_new_tokens: int = 0, predicted_output_tokens: float = 0.0,
                 detokenizer=None, generator=None, on_token=None):
        self.seq_id = seq_id  # arrival order; ties in every policy go to the earlier one
        self.request_id = request_id
        self.request = request
        self.is_score = isinstance(request, ScoreRequest)
        self.token_ids: list[int] = list(request.prompt_token_ids)
        if self.is_score:
            self.token_ids += request.continuation_token_ids
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.priority = request.priority
        self.max_new_tokens = max_new_tokens
        self.predicted_output_tokens = predicted_output_tokens
        self.arrival_step: int | None = None  # the scheduler's step when it first queued
        self.constraint = None  # llguidance matcher of the request's structured output (runtime/structured.py)
        self.draft_token_ids: list[int] = []  # speculative tokens proposed for the next step (runtime/speculation.py)
        self.acceptance = AcceptanceWindow()  # its latest drafts and how many the target kept (or would have)
        self.detokenizer = detokenizer
        self.generator = generator
        self.on_token = on_token
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        # KV state, owned by KVCacheManager.
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.prefix_node = None
        self.num_tree_blocks = 0
        # Accounting.
        self.num_cached_prompt_tokens = 0  # served from the prefix cache at first admission
        self.tier_tokens: dict[str, int] = {}  # of the last prefix match, tokens restored from the host / disk tier
        self.cache_tier_hits: dict[str, int] = {}  # num_cached_prompt_tokens by tier: memory, host, disk
        self.num_preemptions = 0
        self.token_logprobs: list[float] = []  # score requests
        # generation requests that asked for logprobs: one per output token
        wants = not self.is_score and request.sampling.logprobs is not None
        self.output_logprobs: list[TokenLogprobs] | None = [] if wants else None

    @property
    def output_token_ids(self) -> list[int]:
        return [] if self.is_score else self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return 0 if self.is_score else len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_tokens_to_compute(self) -> int:
        """A score request needs no hidden state for its last continuation token."""
        return len(self.token_ids) - 1 if self.is_score else len(self.token_ids)

    @property
    def num_remaining_tokens(self) -> int:
        return self.num_tokens_to_compute - self.num_computed_tokens

    @property
    def max_cached_tokens(self) -> int:
        """Leading tokens that may come from the prefix cache: those whose logits are never needed."""
        return self.num_prompt_tokens - 1 if self.is_score else len(self.token_ids) - 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def logit_offsets(self, start: int, num_tokens: int) -> tuple[int, ...]:
        """Offsets within the chunk [start, start + num_tokens) whose next-token logits are used."""
        if self.is_score:
            first, end = max(start, self.num_prompt_tokens - 1), min(start + num_tokens, len(self.token_ids) - 1)
            return tuple(range(first - start, end - start))
        return (num_tokens - 1,) if start + num_tokens == len(self.token_ids) else ()

    def append_token(self, token_id: int, eos_token_ids: frozenset[int]) -> str:
        """Add a sampled token; returns the new text. Same stop rules as runtime.generate's loop."""
        params = self.request.sampling
        self.token_ids.append(token_id)
        num_output = len(self.token_ids) - self.num_prompt_tokens
        reason = finish_reason(token_id, num_output, params, eos_token_ids)
        if reason == "stop":
            self.finish_reason = "stop"
            return ""
        if self.constraint is not None:
            self.constraint.consume_token(token_id)
            if self.constraint.is_stopped():  # the constraint is complete and allows nothing more
                reason = "stop"
        detok = self.detokenizer
        delta = detok.push(token_id)
        if params.stop and (cut := find_stop(detok.text, params.stop, len(detok.text) - len(delta))) is not None:
            detok.text = detok.text[:cut]
            reason, delta = "stop", ""
        if num_output >= self.max_new_tokens:
            reason = reason or "length"
        self.finish_reason = reason
        return delta

    def append_logprobs(self, logprobs: list[float]) -> None:
        self.token_logprobs += logprobs
        if len(self.token_logprobs) == len(self.request.continuation_token_ids):
            self.finish_reason = "scored"

    def __repr__(self) -> str:
        return (f"Sequence({self.seq_id}, {self.status.value}, tokens={len(self.token_ids)}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_table})")
