"""Drafts from a smaller model of the same tokenizer (speculative = 'draft').

The draft model keeps a paged KV pool of its own (no prefix cache: its blocks hold its own K/V, never the
target's) and a shadow of each sequence it drafts for. Each engine step it first catches up, in one ragged
forward over every sequence, on the tokens it has not computed: the whole prompt the first time, afterwards
the drafts the target accepted and the target's own token. That forward gives each sequence's first draft;
k - 1 batched one-token steps give the rest. Drafts are greedy, so verification's rejection rule (q a point
mass) keeps a sampled request's distribution exact. A rejected draft's K/V is rolled back like the target's:
the shadow counts as computed only the prefix it shares with the sequence's real tokens.
"""
from __future__ import annotations

from operators.llama import LlamaModel
from runtime.batch import BatchRow, ScheduledBatch
from runtime.kv_blocks import KVCacheManager
from runtime.model_runner import ModelRunner


class _Shadow:
    """The draft model's view of one sequence, in the shape runtime.kv_blocks.KVCacheManager manages."""

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.prefix_node = None
        self.num_tree_blocks = 0

    @property
    def max_cached_tokens(self) -> int:
        return 0


class DraftModelProposer:
    proposes_free = False  # a proposal runs the draft model: a sequence that stopped drafting proposes nothing
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, attention=None):
        """num_blocks of block_size tokens for the draft's K/V (the target's pool holds as many tokens)."""
        self.model = model
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_cache=False)
        self.runner = ModelRunner(model, num_blocks, block_size, "fp32", attention)
        self._shadows: dict[int, _Shadow] = {}

    def propose_all(self, wanted: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """(seq_id, tokens so far, k) -> up to k greedy drafts each; fewer where the draft pool is full."""
        active = []
        for seq_id, tokens, k in wanted:
            shadow = self._shadows.setdefault(seq_id, _Shadow())
            common = 0
            for a, b in zip(shadow.token_ids, tokens):
                if a != b:
                    break
                common += 1
            shadow.num_computed_tokens = min(shadow.num_computed_tokens, common)
            shadow.token_ids = list(tokens)
            # positions up to len(tokens) + k - 2 get K/V: the last draft is never an input
            if self.kv.reserve(shadow, len(tokens) + k - 1 - shadow.num_computed_tokens) is None:
                self.forget(seq_id)  # no room: no drafts this step (and the blocks go back to the others)
                continue
            active.append((seq_id, shadow, k))
        drafts: dict[int, list[int]] = {seq_id: [] for seq_id, _, _ in active}
        if not active:
            return drafts
        by_id = {seq_id: (shadow, k) for seq_id, shadow, k in active}
        rows = [self._row(seq_id, s, s.token_ids[s.num_computed_tokens:]) for seq_id, s, _ in active]
        while rows:
            tokens = self.runner.run(ScheduledBatch(tuple(rows))).greedy(list(range(len(rows))), [()] * len(rows))
            next_rows = []
            for row, token in zip(rows, tokens):
                seq_id = row.seq_id
                shadow, k = by_id[seq_id]
                shadow.num_computed_tokens += row.num_tokens
                drafts[seq_id].append(token)
                shadow.token_ids.append(token)
                if len(drafts[seq_id]) < k:
                    next_rows.append(self._row(seq_id, shadow, [token]))
            rows = next_rows
        return drafts

    @staticmethod
    def _row(seq_id: int, shadow: _Shadow, tokens: list[int]) -> BatchRow:
        return BatchRow(seq_id, tuple(tokens), shadow.num_computed_tokens, tuple(shadow.block_table),
                        (len(tokens) - 1,))

    def forget(self, seq_id: int) -> None:
        shadow = self._shadows.pop(seq_id, None)
        if shadow is not None:
            self.kv.free(shadow)
