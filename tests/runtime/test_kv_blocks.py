"""Block pool and block tables: refcounts always equal the owners, nothing leaks, nothing is freed twice."""
from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runtime.kv_blocks import BlockPool, KVCacheManager, OutOfBlocksError
from operators.requests import GenerationRequest
from runtime.sequence import Sequence


def test_pool_hands_out_each_block_once_and_refuses_when_empty():
    pool = BlockPool(3)
    blocks = [pool.allocate() for _ in range(3)]
    assert sorted(blocks) == [0, 1, 2] and pool.num_free == 0 and pool.peak_used == 3
    with pytest.raises(OutOfBlocksError):
        pool.allocate()
    assert pool.decref(blocks[1]) is True
    assert pool.allocate() == blocks[1]


def test_double_free_is_an_error():
    pool = BlockPool(1)
    block = pool.allocate()
    pool.decref(block)
    with pytest.raises(RuntimeError, match="double free"):
        pool.decref(block)


def make_seq(seq_id, tokens):
    return Sequence(seq_id, f"s{seq_id}", GenerationRequest(tuple(tokens)))


def test_shared_block_is_copied_before_it_is_written():
    kv = KVCacheManager(num_blocks=8, block_size=2)
    first = make_seq(0, [1, 2, 3, 4])
    kv.reserve(first, 4)
    first.num_computed_tokens = 4
    kv.cache_computed(first)
    kv.free(first)
    second = make_seq(1, [1, 2, 3, 4])  # fully cached: its last token is recomputed for the logits
    assert kv.match_prefix(second) == 3
    shared = second.block_table[1]
    copies = kv.reserve(second, 1)
    assert copies == [(shared, second.block_table[1])] and second.block_table[1] != shared
    assert kv.pool.refcounts[shared] == 1  # only the tree holds the original now
    assert kv.prefix_cache.num_evictable_blocks == 1


class BlockTableMachine(RuleBasedStateMachine):
    """Sequences come, grow chunk by chunk and go, over a small pool with the prefix cache on."""

    def __init__(self):
        super().__init__()
        self.kv = KVCacheManager(num_blocks=12, block_size=2)
        self.seqs: list[Sequence] = []
        self.next_id = 0

    @rule(tokens=st.lists(st.integers(0, 2), min_size=1, max_size=10))
    def admit(self, tokens):
        seq = make_seq(self.next_id, tokens)
        self.next_id += 1
        self.kv.match_prefix(seq)
        if self.kv.reserve(seq, 0) is None:
            self.kv.free(seq)
            return
        self.seqs.append(seq)

    @precondition(lambda self: self.seqs)
    @rule(index=st.integers(0, 100), num_tokens=st.integers(1, 5), new_token=st.integers(0, 2))
    def compute(self, index, num_tokens, new_token):
        seq = self.seqs[index % len(self.seqs)]
        if seq.num_remaining_tokens == 0:
            seq.token_ids.append(new_token)  # a decoded token, to be computed next
        n = min(num_tokens, seq.num_remaining_tokens)
        free_before = self.kv.pool.num_free + self.kv.prefix_cache.num_evictable_blocks
        copies = self.kv.reserve(seq, n)
        if copies is None:
            assert self.kv.blocks_needed(seq, seq.num_computed_tokens + n) > free_before
            return
        for _, dst in copies:
            assert self.kv.pool.refcounts[dst] == 1
        for pos in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
            assert self.kv.pool.refcounts[seq.block_table[pos // 2]] == 1, "writing into a shared block"
        seq.num_computed_tokens += n
        self.kv.cache_computed(seq)

    @precondition(lambda self: self.seqs)
    @rule(index=st.integers(0, 100), keep=st.booleans())
    def finish(self, index, keep):
        seq = self.seqs.pop(index % len(self.seqs))
        if keep:
            self.kv.cache_computed(seq)
        self.kv.free(seq)

    @rule(count=st.integers(1, 4))
    def evict(self, count):
        for block in self.kv.prefix_cache.evict(count):
            assert self.kv.pool.decref(block), "evicted a block a sequence still uses"

    @invariant()
    def refcounts_equal_owners(self):
        tree = self.kv.prefix_cache.all_blocks()
        assert len(tree) == len(set(tree))
        for block in range(self.kv.pool.num_blocks):
            owners = sum(s.block_table.count(block) for s in self.seqs) + tree.count(block)
            assert self.kv.pool.refcounts[block] == owners, f"block {block}"
        assert self.kv.pool.num_free == sum(1 for r in self.kv.pool.refcounts if r == 0)
        assert self.kv.pool.num_used <= self.kv.pool.num_blocks

    @invariant()
    def tables_cover_computed_tokens(self):
        for seq in self.seqs:
            assert len(seq.block_table) == len(set(seq.block_table))
            assert len(seq.block_table) * 2 >= seq.num_computed_tokens

    @invariant()
    def unlocked_tree_blocks_are_held_by_the_tree_alone(self):
        stack = list(self.kv.prefix_cache.root.children.values())
        while stack:
            node = stack.pop()
            if node.lock_ref == 0:
                assert self.kv.pool.refcounts[node.block] == 1
            stack.extend(node.children.values())


TestBlockTableMachine = BlockTableMachine.TestCase
TestBlockTableMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
