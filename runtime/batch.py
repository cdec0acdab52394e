"""The batch descriptor: what one engine step computes, as plain data (no tensors).

The scheduler builds it; `ModelRunner.prepare_batch` turns it into tensors. Every
row is a chunk of one sequence's tokens: a decode is a chunk of one token, a prefill
chunk is several, a speculative decode is one token plus its drafts; all attend to the
sequence's cached prefix plus themselves.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchRow:
    seq_id: int
    token_ids: tuple[int, ...]  # the chunk's tokens, at positions start .. start + len - 1
    start: int  # tokens of this sequence already in the KV cache
    block_table: tuple[int, ...]  # physical blocks covering positions 0 .. start + len - 1
    logit_offsets: tuple[int, ...]  # offsets within the chunk whose next-token logits are needed
    num_draft_tokens: int = 0  # speculative: the chunk's last tokens are drafts to verify, not yet the sequence's

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def context_len(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True)
class ScheduledBatch:
    rows: tuple[BatchRow, ...]
    block_copies: tuple[tuple[int, int], ...] = ()  # (src, dst) copy-on-write, done before the forward
    preempted_seq_ids: tuple[int, ...] = ()  # sequences sent back to the queue while scheduling

    @property
    def num_tokens(self) -> int:
        return sum(r.num_tokens for r in self.rows)

    @property
    def num_logits(self) -> int:
        return sum(len(r.logit_offsets) for r in self.rows)

    @property
    def is_empty(self) -> bool:
        return not self.rows
