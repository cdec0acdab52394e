"""Iteration-level scheduling: which sequences run in the next step, and how many tokens each.

Every step has a token budget (`prefill_chunk_tokens`, Sarathi-Serve style) and a cap
on sequences (`max_batch_size`). Running sequences go first, in precedence order
(lower priority value first, as in vLLM; then earlier arrival): a decoding one takes one token, a prefilling
one a chunk of what is left. Waiting sequences are then admitted in policy order (FCFS
or shortest-predicted-first) while the budget, the batch cap and the KV pool allow.
Shortest-predicted-first ages: a waiting sequence's predicted length counts down by
AGING_TOKENS_PER_STEP every step it waits, so after at most its own prediction's worth of
steps it goes ahead of any newcomer - no starvation, however many short requests arrive.
With equal predictions (no history) it is FCFS.
When the pool cannot hold a running sequence's next tokens, the lowest-precedence
running sequence is preempted by recompute: its blocks are released (the computed ones
stay in the prefix cache) and it goes back to the queue with its output so far. A
waiting sequence of more urgent priority (a lower value) than running ones preempts them the same way when
the batch cap or the pool would otherwise keep it waiting.
No torch here.
"""
from __future__ import annotations

from runtime.batch import BatchRow, ScheduledBatch
from operators.engine_config import EngineConfig
from runtime.kv_blocks import KVCacheManager
from runtime.sequence import Sequence, SequenceStatus


def precedence(seq: Sequence) -> tuple:
    """Who keeps running under memory pressure: the lower priority value (vLLM's rule), then earlier arrival."""
    return (seq.priority, seq.seq_id)


AGING_TOKENS_PER_STEP = 1.0
POLICIES = ("fcfs", "spf")


class Scheduler:
    def __init__(self, config: EngineConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        if config.scheduling not in POLICIES:
            raise ValueError(f"scheduling must be one of {POLICIES}, got {config.scheduling!r}")
        self.steps = 0  # schedule() calls: the clock that ages waiting sequences
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_prompt_tokens = 0  # of admitted sequences, counted at first admission
        self.num_cached_prompt_tokens = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        if seq.arrival_step is None:  # a preempted sequence keeps its first arrival: it has waited since
            seq.arrival_step = self.steps
        self.waiting.append(seq)

    def admission_order(self, seq: Sequence) -> tuple:
        """Lower priority value first (vLLM's rule); then FCFS, or the shortest aged prediction of what is left."""
        if self.config.scheduling == "fcfs":
            return (seq.priority, seq.seq_id)
        left = seq.predicted_output_tokens - seq.num_output_tokens
        return (seq.priority, left - AGING_TOKENS_PER_STEP * (self.steps - seq.arrival_step), seq.seq_id)

    def schedule(self) -> ScheduledBatch:
        self.steps += 1
        budget, rows, copies = self.config.prefill_chunk_tokens, [], []
        yielded = self._make_room_for_priority()
        preempted: list[Sequence] = []  # for lack of memory, this step
        queue = sorted(self.running, key=precedence)  # not yet scheduled this step
        while queue and budget > 0:
            seq = queue.pop(0)
            # a decode verifies its drafts in the same row, as far as the budget and the pool allow
            num_tokens = min(seq.num_remaining_tokens + self._drafts(seq), budget)
            while (fit := min(num_tokens, self.kv.max_new_tokens(seq))) == 0 and queue:
                preempted.append(self._preempt(queue.pop()))  # the lowest-precedence one left
            reserved = self.kv.reserve(seq, fit) if fit else None
            if reserved is None:
                preempted.append(self._preempt(seq))  # it is the lowest left: it yields itself
                continue
            copies += reserved
            rows.append(self._row(seq, fit))
            budget -= fit
        if not (preempted and rows):  # under memory pressure, admitting now would only preempt again
            self._admit(rows, copies, budget)
        return ScheduledBatch(tuple(rows), tuple(copies), tuple(p.seq_id for p in yielded + preempted))

    def _make_room_for_priority(self) -> list[Sequence]:
        """Preempt less urgent running sequences (a higher priority value), lowest precedence first, until the
        first waiting sequence fits the batch cap and the pool (its whole remaining prompt)."""
        if not self.waiting or not self.running:
            return []
        first = min(self.waiting, key=self.admission_order)
        victims = sorted((s for s in self.running if s.priority > first.priority), key=precedence)
        yielded = []
        while victims and not self._fits(first):
            yielded.append(self._preempt(victims.pop()))
        return yielded

    def _fits(self, seq: Sequence) -> bool:
        if len(self.running) >= self.config.max_batch_size:
            return False
        self.kv.match_prefix(seq)
        fits = self.kv.blocks_needed(seq, seq.num_tokens_to_compute) <= self.kv.num_available_blocks
        self.kv.free(seq)
        return fits

    def _admit(self, rows: list[BatchRow], copies: list, budget: int) -> None:
        self.waiting.sort(key=self.admission_order)
        in_flight = self._blocks_in_flight() if self.kv.prefix_cache else set()
        for seq in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.config.max_batch_size:
                break
            cached = self.kv.match_prefix(seq)
            if in_flight and self._next_block_key(seq) in in_flight:
                # A running sequence is computing this very prefix: wait one step and reuse its blocks.
                self.kv.free(seq)
                continue
            num_tokens = min(seq.num_remaining_tokens, budget)
            # Admit only when the whole remaining prompt fits, so admission never forces preemption.
            reserved = None
            if self.kv.blocks_needed(seq, seq.num_tokens_to_compute) <= self.kv.num_available_blocks:
                reserved = self.kv.reserve(seq, num_tokens)
            if reserved is None:
                self.kv.free(seq)
                break
            self.waiting.remove(seq)
            if seq.num_preemptions == 0:
                seq.num_cached_prompt_tokens = min(cached, seq.num_prompt_tokens)
                from_tiers = {t: min(n, seq.num_cached_prompt_tokens) for t, n in seq.tier_tokens.items()}
                memory = seq.num_cached_prompt_tokens - sum(from_tiers.values())
                seq.cache_tier_hits = {"memory": max(0, memory), **from_tiers} if seq.num_cached_prompt_tokens else {}
                self.num_cached_prompt_tokens += seq.num_cached_prompt_tokens
                self.num_prompt_tokens += seq.num_prompt_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            copies += reserved
            rows.append(self._row(seq, num_tokens))
            budget -= num_tokens
            if self.kv.prefix_cache:
                in_flight |= self._block_keys_to_compute(seq)

    def _block_keys_to_compute(self, seq: Sequence) -> set[tuple[int, ...]]:
        """Prefixes (as token tuples) ending at each full block the sequence has yet to compute."""
        bs = self.kv.block_size
        first_end = (seq.num_computed_tokens // bs + 1) * bs
        return {tuple(seq.token_ids[:end]) for end in range(first_end, seq.num_tokens_to_compute + 1, bs)}

    def _blocks_in_flight(self) -> set[tuple[int, ...]]:
        keys: set[tuple[int, ...]] = set()
        for seq in self.running:
            if seq.num_remaining_tokens > 1:  # prefilling; decodes rarely share blocks with new prompts
                keys |= self._block_keys_to_compute(seq)
        return keys

    def _next_block_key(self, seq: Sequence) -> tuple[int, ...]:
        end = (seq.num_computed_tokens // self.kv.block_size + 1) * self.kv.block_size
        return tuple(seq.token_ids[:end]) if end <= len(seq.token_ids) else ()

    @staticmethod
    def _drafts(seq: Sequence) -> int:
        return len(seq.draft_token_ids) if seq.num_remaining_tokens == 1 else 0

    def _row(self, seq: Sequence, num_tokens: int) -> BatchRow:
        start = seq.num_computed_tokens
        real = min(num_tokens, seq.num_remaining_tokens)
        drafts = seq.draft_token_ids[: num_tokens - real] if real == 1 else []
        if drafts:  # the last real token and every draft need their next-token logits
            return BatchRow(seq.seq_id, (seq.token_ids[start], *drafts), start, tuple(seq.block_table),
                            tuple(range(1 + len(drafts))), len(drafts))
        return BatchRow(seq.seq_id, tuple(seq.token_ids[start : start + real]), start,
                        tuple(seq.block_table), seq.logit_offsets(start, real))

    def _preempt(self, seq: Sequence) -> Sequence:
        self.running.remove(seq)
        self.kv.cache_computed(seq)  # recompute will find what it had computed, unless evicted meanwhile
        self.kv.free(seq)
        if seq.is_score:
            seq.token_logprobs = []
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq)
        return seq

    def advance(self, batch: ScheduledBatch, seqs: dict[int, Sequence]) -> None:
        """The batch ran: its tokens' K/V are in the cache now (drafts count once verified: accept_drafts)."""
        for row in batch.rows:
            seq = seqs[row.seq_id]
            seq.num_computed_tokens += row.num_tokens - row.num_draft_tokens
            self.kv.cache_computed(seq)

    def accept_drafts(self, seq: Sequence, num_accepted: int) -> None:
        """Verified drafts are the sequence's tokens now, their K/V valid; the rejected ones' slots are
        simply not counted (the next step overwrites them): the KV cache's rollback."""
        seq.num_computed_tokens = min(seq.num_computed_tokens + num_accepted, len(seq.token_ids))
        self.kv.cache_computed(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Leave the engine (done or cancelled): blocks released, computed ones kept in the prefix cache."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.kv.cache_computed(seq)
        self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
