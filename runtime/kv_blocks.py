"""Paged KV memory as block ids: the pool (refcounts) and per-sequence block tables.

The KV tensors themselves ([num_blocks, block_size, Hkv, D] per layer) live in the
model runner, preallocated once; this module only decides which block holds which
tokens. A block's reference count is the number of owners: each sequence whose
block table lists it, plus the prefix cache when the tree holds it. A sequence never
writes into a block it shares: it copies the block first (copy-on-write) and the
model runner performs the copy before the forward pass. No torch here.

>>> pool = BlockPool(2)
>>> a = pool.allocate(); pool.incref(a); pool.decref(a), pool.decref(a)
(False, True)
>>> pool.num_free
2
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from runtime.prefix_cache import MatchResult, RadixPrefixCache, block_digests


class OutOfBlocksError(RuntimeError):
    pass


class BlockPool:
    """A fixed set of block ids with reference counts; freed blocks are reused FIFO."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"the KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.refcounts = [0] * num_blocks
        self._free = deque(range(num_blocks))
        self.peak_used = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise OutOfBlocksError(f"all {self.num_blocks} KV blocks are in use")
        block = self._free.popleft()
        self.refcounts[block] = 1
        self.peak_used = max(self.peak_used, self.num_used)
        return block

    def incref(self, block: int) -> None:
        if self.refcounts[block] <= 0:
            raise RuntimeError(f"incref of free block {block}")
        self.refcounts[block] += 1

    def decref(self, block: int) -> bool:
        """Drop one reference; True when that freed the block."""
        if self.refcounts[block] <= 0:
            raise RuntimeError(f"double free of block {block}")
        self.refcounts[block] -= 1
        if self.refcounts[block] == 0:
            self._free.append(block)
            return True
        return False


class KVCacheManager:
    """Block tables of sequences over one pool, with the radix prefix cache when enabled.

    A sequence here is anything with `token_ids`, `block_table` (list of block ids),
    `num_computed_tokens`, `max_cached_tokens` (leading tokens whose outputs are never
    needed), `prefix_node` and `num_tree_blocks` (see runtime.sequence.Sequence).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True, tiers=None):
        """tiers: where blocks live beyond the pool (runtime.kv_tiers.TieredKVStore: contains, restore, evicted,
        computed), with the prefix cache only."""
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.tiers = tiers if enable_prefix_cache else None
        self.prefix_cache = RadixPrefixCache(block_size, on_evict=tiers.evicted if self.tiers else None) \
            if enable_prefix_cache else None
        if self.tiers is not None:
            self.tiers.in_memory = self.prefix_cache.digests.__contains__

    def prefetch(self, token_ids, max_cached_tokens: int) -> None:
        """Start reading ahead, from the tiers, the blocks of this prompt that the pool lacks (safe from any
        thread: it reads only the tree's digest set)."""
        if self.tiers is None:
            return
        self.tiers.prefetch(block_digests(token_ids, self.block_size, 0, max_cached_tokens // self.block_size))

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def num_available_blocks(self) -> int:
        """Free blocks plus blocks the prefix cache would give up on demand."""
        evictable = self.prefix_cache.num_evictable_blocks if self.prefix_cache else 0
        return self.pool.num_free + evictable

    def match_prefix(self, seq) -> int:
        """Reuse the longest cached prefix of a sequence that holds no blocks; returns tokens reused."""
        assert not seq.block_table and seq.prefix_node is None
        if self.prefix_cache is None:
            return 0
        match = self.prefix_cache.match(seq.token_ids)
        if self.tiers is not None:
            match, seq.tier_tokens = self._restore_from_tiers(seq, match)
        num_tokens = min(match.num_tokens, seq.max_cached_tokens)
        if num_tokens == 0:
            return 0
        # When the whole prefix is cached the last token is recomputed; its block stays shared
        # until that write, which copies it (copy-on-write in reserve()).
        blocks = match.blocks[: self.blocks_for(num_tokens)]
        node = match.node
        for _ in range(len(match.blocks) - len(blocks)):
            node = node.parent  # lock exactly the blocks taken
        for block in blocks:
            self.pool.incref(block)
        self.prefix_cache.lock(node)
        seq.prefix_node = node
        seq.block_table = list(blocks)
        seq.num_tree_blocks = num_tokens // self.block_size
        seq.num_computed_tokens = num_tokens
        return num_tokens

    def _restore_from_tiers(self, seq, match: MatchResult) -> tuple[MatchResult, dict[str, int]]:
        """Load the blocks that continue the memory-cached prefix `match` from the host or disk tier into pool
        blocks and the tree, as long as they are found and the pool has room; returns the match extended over
        them and the tokens restored per tier."""
        return self._extend(seq.token_ids, match, seq.max_cached_tokens // self.block_size,
                            lambda i, digest: self.tiers.contains(digest) is not None,
                            lambda i, digest, block: self.tiers.restore(digest, block))

    def export_prefix(self, token_ids, read_block: Callable[[int], bytes]) -> list[bytes]:
        """The whole blocks of token_ids' longest cached prefix, as bytes (a prefill replica hands them over)."""
        if self.prefix_cache is None:
            return []
        return [read_block(block) for block in self.prefix_cache.match(token_ids).blocks]

    def adopt_prefix(self, token_ids, raws: list[bytes], write_block: Callable[[int, bytes], None]) -> int:
        """Blocks another engine computed for token_ids' first len(raws) whole blocks join the pool and the prefix
        cache (evictable, like any cached prefix), so a request over token_ids computes only the rest. Blocks
        already cached here are kept; returns the tokens cached now."""
        if self.prefix_cache is None:
            return 0

        def adopt(i: int, digest: bytes, block: int) -> str:
            write_block(block, raws[i])
            return "adopted"
        match = self.prefix_cache.match(token_ids[:len(raws) * self.block_size])
        return self._extend(token_ids, match, len(raws), lambda i, digest: True, adopt)[0].num_tokens

    def _extend(self, tokens, match: MatchResult, last: int, has: Callable[[int, bytes], bool],
                load: Callable[[int, bytes, int], str | None]) -> tuple[MatchResult, dict[str, int]]:
        """Extend the cached prefix `match` over tokens' whole blocks up to `last`, each loaded into a new pool block
        by load(block index, its chain digest, pool block) -> where it came from (None: it could not be), while
        has(...) says a source has the next one and the pool has room; returns the match extended and the tokens
        loaded per source."""
        bs = self.block_size
        restored: dict[str, int] = {}
        first = len(match.blocks)
        if first >= last:
            return match, restored
        self.prefix_cache.lock(match.node)  # making room must not evict the prefix being extended
        blocks = []
        try:
            for i, next_digest in enumerate(block_digests(tokens, bs, first, last, match.node.digest), first):
                if not has(i, next_digest) or self.num_available_blocks < 2:
                    break
                self._make_free(1)
                block = self.pool.allocate()
                source = load(i, next_digest, block)
                if source is None:
                    self.pool.decref(block)
                    break
                blocks.append(block)
                restored[source] = restored.get(source, 0) + bs
        finally:
            self.prefix_cache.unlock(match.node)
        if not blocks:
            return match, restored
        result = self.prefix_cache.insert(tokens[:(first + len(blocks)) * bs], list(match.blocks) + blocks)
        for block in result.adopted_blocks:
            self.pool.incref(block)
        for block in blocks:
            self.pool.decref(block)  # the tree's reference stays
        return MatchResult(match.blocks + tuple(blocks), (first + len(blocks)) * bs, result.node), restored

    def blocks_needed(self, seq, end: int) -> int:
        """Blocks the sequence must still get to hold tokens up to `end` (copies included)."""
        return max(0, self.blocks_for(end) - len(seq.block_table)) + len(self._shared_written_blocks(seq, end))

    def max_new_tokens(self, seq) -> int:
        """How many more tokens the sequence could write with the blocks it holds or could get."""
        capacity = (len(seq.block_table) + self.num_available_blocks) * self.block_size
        shared = self._shared_written_blocks(seq, seq.num_computed_tokens + 1)
        return max(0, capacity - len(shared) * self.block_size - seq.num_computed_tokens)

    def reserve(self, seq, num_new_tokens: int) -> list[tuple[int, int]] | None:
        """Make room for tokens [num_computed, num_computed + n) of seq.

        Returns the (src, dst) block copies to perform before writing, or None (nothing
        changed) when the pool cannot provide the blocks even after eviction.
        """
        end = seq.num_computed_tokens + num_new_tokens
        shared = self._shared_written_blocks(seq, end)
        num_new_blocks = max(0, self.blocks_for(end) - len(seq.block_table))
        if num_new_blocks + len(shared) > self.num_available_blocks:
            return None
        self._make_free(num_new_blocks + len(shared))
        copies = []
        for index in shared:
            src, dst = seq.block_table[index], self.pool.allocate()
            self.pool.decref(src)
            seq.block_table[index] = dst
            copies.append((src, dst))
            if seq.prefix_node is not None and seq.prefix_node.block == src:
                # The sequence no longer uses the cached block: let the tree evict it.
                self.prefix_cache.lock(seq.prefix_node.parent)
                self.prefix_cache.unlock(seq.prefix_node)
                seq.prefix_node = seq.prefix_node.parent
        seq.block_table.extend(self.pool.allocate() for _ in range(num_new_blocks))
        return copies

    def _shared_written_blocks(self, seq, end: int) -> list[int]:
        first = seq.num_computed_tokens // self.block_size
        last = min(self.blocks_for(end), len(seq.block_table))
        return [i for i in range(first, last) if self.pool.refcounts[seq.block_table[i]] > 1]

    def _make_free(self, num_blocks: int) -> None:
        short = num_blocks - self.pool.num_free
        if short > 0 and self.prefix_cache is not None:
            for block in self.prefix_cache.evict(short):
                self.pool.decref(block)
        if self.pool.num_free < num_blocks:
            raise OutOfBlocksError(f"needed {num_blocks} free KV blocks, have {self.pool.num_free}")

    def cache_computed(self, seq) -> None:
        """Put the sequence's fully computed blocks in the prefix cache (others can reuse them now)."""
        if self.prefix_cache is None:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= seq.num_tree_blocks:
            return
        result = self.prefix_cache.insert(seq.token_ids[: num_full * self.block_size], seq.block_table[:num_full])
        for block in result.adopted_blocks:
            self.pool.incref(block)
        if self.tiers is not None and result.adopted_blocks:
            self._write_through(seq, result.node, num_full)
        self.prefix_cache.lock(result.node)
        if seq.prefix_node is not None:
            self.prefix_cache.unlock(seq.prefix_node)
        seq.prefix_node = result.node
        seq.num_tree_blocks = num_full

    def _write_through(self, seq, node, num_full: int) -> None:
        """Full blocks of the prompt just computed go to the disk tier (outputs are rarely asked again)."""
        prompt_blocks = getattr(seq, "num_prompt_tokens", 0) // self.block_size
        for index in range(num_full - 1, seq.num_tree_blocks - 1, -1):
            if index < prompt_blocks and node.block == seq.block_table[index]:
                self.tiers.computed(node.block, node.digest)
            node = node.parent

    def free(self, seq) -> None:
        """Release every block of the sequence (cached ones stay in the tree, unlocked)."""
        for block in seq.block_table:
            self.pool.decref(block)
        if seq.prefix_node is not None:
            self.prefix_cache.unlock(seq.prefix_node)
        seq.block_table = []
        seq.prefix_node = None
        seq.num_tree_blocks = 0
        seq.num_computed_tokens = 0
