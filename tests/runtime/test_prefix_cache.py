"""The radix prefix cache: longest-prefix matches at block granularity, LRU eviction, locks."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runtime.prefix_cache import RadixPrefixCache


def test_match_returns_the_longest_cached_prefix_in_whole_blocks():
    cache = RadixPrefixCache(block_size=2)
    cache.insert([1, 2, 3, 4, 5, 6], blocks=[10, 11, 12])
    assert cache.match([1, 2, 3, 4, 9, 9]).blocks == (10, 11)
    assert cache.match([1, 2, 3]).num_tokens == 2  # a partial block never matches
    assert cache.match([7, 8]).blocks == ()


def test_insert_keeps_the_blocks_it_already_holds():
    cache = RadixPrefixCache(block_size=2)
    cache.insert([1, 2, 3, 4], blocks=[10, 11])
    result = cache.insert([1, 2, 3, 4, 5, 6], blocks=[20, 21, 22])
    assert result.adopted_blocks == (22,)
    assert cache.match([1, 2, 3, 4, 5, 6]).blocks == (10, 11, 22)
    assert cache.num_blocks == 3


def test_eviction_is_least_recently_used_and_leaf_first():
    cache = RadixPrefixCache(block_size=1)
    cache.insert([1, 2], blocks=[10, 11])
    cache.insert([5], blocks=[50])
    cache.match([1, 2])  # [1, 2] is now more recent than [5]
    assert cache.evict(1) == (50,)
    assert cache.evict(5) == (11, 10)  # the child goes before its parent
    assert cache.num_blocks == 0


def test_locked_prefixes_survive_eviction():
    cache = RadixPrefixCache(block_size=1)
    locked = cache.insert([1, 2, 3], blocks=[10, 11, 12]).node
    cache.insert([1, 9], blocks=[13, 19])  # reuses block 10 for token 1
    cache.lock(locked)
    assert cache.num_evictable_blocks == 1
    assert cache.evict(10) == (19,)
    cache.unlock(locked)
    assert set(cache.evict(10)) == {10, 11, 12}


class RadixCacheMachine(RuleBasedStateMachine):
    """Random inserts, matches, locks and evictions against a dict of prefix -> block."""

    def __init__(self):
        super().__init__()
        self.block_size = 2
        self.cache = RadixPrefixCache(self.block_size)
        self.model: dict[tuple[int, ...], int] = {}  # token prefix ending at a block boundary -> block
        self.next_block = 0
        self.locks: list = []

    def prefixes(self, tokens):
        return [tuple(tokens[:end]) for end in range(self.block_size, len(tokens) + 1, self.block_size)]

    @rule(tokens=st.lists(st.integers(0, 2), max_size=9))
    def insert(self, tokens):
        blocks = list(range(self.next_block, self.next_block + len(tokens) // self.block_size))
        self.next_block += len(blocks)
        result = self.cache.insert(tokens, blocks)
        expected_adopted = []
        for prefix, block in zip(self.prefixes(tokens), blocks):
            if prefix not in self.model:
                self.model[prefix] = block
                expected_adopted.append(block)
        assert list(result.adopted_blocks) == expected_adopted

    @rule(tokens=st.lists(st.integers(0, 2), max_size=9), keep=st.booleans())
    def match(self, tokens, keep):
        result = self.cache.match(tokens)
        expected = []
        for prefix in self.prefixes(tokens):
            if prefix not in self.model:
                break
            expected.append(self.model[prefix])
        assert list(result.blocks) == expected
        if keep and expected:
            self.cache.lock(result.node)
            self.locks.append((result.node, tuple(tokens[: result.num_tokens])))

    @precondition(lambda self: self.locks)
    @rule(index=st.integers(0, 100))
    def unlock(self, index):
        node, _ = self.locks.pop(index % len(self.locks))
        self.cache.unlock(node)

    @rule(count=st.integers(0, 6))
    def evict(self, count):
        protected = {self.model[p] for _, tokens in self.locks for p in self.prefixes(tokens)}
        evictable_before = self.cache.num_evictable_blocks
        evicted = self.cache.evict(count)
        assert len(evicted) == min(count, evictable_before)
        assert not protected & set(evicted), "evicted a locked block"
        gone = {p for p, b in self.model.items() if b in evicted}
        for p in gone:  # a prefix is evicted only after every longer prefix that extends it
            assert not any(q[: len(p)] == p and q not in gone for q in self.model if len(q) > len(p))
            del self.model[p]

    @invariant()
    def tree_matches_model(self):
        assert sorted(self.cache.all_blocks()) == sorted(self.model.values())
        assert self.cache.num_blocks == len(self.model)
        locked = {self.model[p] for _, tokens in self.locks for p in self.prefixes(tokens)}
        assert self.cache.num_locked_blocks == len(locked)


TestRadixCacheMachine = RadixCacheMachine.TestCase
TestRadixCacheMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
