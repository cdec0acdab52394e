"""Radix prefix cache (SGLang's RadixAttention idea) at KV-block granularity.

A tree over token ids: each edge is one full block of `block_size` tokens and each
node owns the physical KV block holding those tokens' K/V. A request reuses the
longest cached prefix of its prompt; finished (and in-flight) sequences leave their
full blocks in the tree; unlocked leaves are evicted by a policy (LRU by default)
when the pool runs low.

The tree never touches the block pool: `insert` says which blocks it adopted (the
caller takes a reference for the tree) and `evict` returns the blocks it dropped
(the caller releases the tree's reference). No torch here.

Each node also carries a digest of its whole path (BLAKE2b of its parent's digest and its own tokens):
the content address under which runtime/kv_tiers.py keeps a block beyond the pool.

>>> cache = RadixPrefixCache(block_size=2)
>>> cache.insert([1, 2, 3, 4, 5], blocks=[10, 11]).adopted_blocks
(10, 11)
>>> m = cache.match([1, 2, 3, 9])
>>> m.blocks, m.num_tokens
((10,), 2)
>>> cache.evict(1)
(11,)
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterator
from array import array
from dataclasses import dataclass, field


@dataclass(eq=False)
class RadixNode:
    key: tuple[int, ...]  # the block's tokens (empty at the root)
    block: int  # physical KV block id (-1 at the root)
    parent: RadixNode | None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    lock_ref: int = 0  # sequences using this node or a descendant
    last_access: int = 0
    digest: bytes = b""  # of the path from the root: chain_digest(parent.digest, key)

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class MatchResult:
    blocks: tuple[int, ...]  # physical blocks of the matched prefix, in order
    num_tokens: int  # len(blocks) * block_size
    node: RadixNode  # deepest matched node (the root when nothing matched); lock it to keep the prefix


@dataclass(frozen=True)
class InsertResult:
    node: RadixNode  # deepest node of the inserted prefix
    adopted_blocks: tuple[int, ...]  # the caller's blocks the tree now also references


def chain_digest(parent: bytes, key: tuple[int, ...]) -> bytes:
    """A block's content address: its tokens, and everything before them through the parent's digest."""
    return hashlib.blake2b(parent + array("i", key).tobytes(), digest_size=16).digest()


def block_digests(token_ids, block_size: int, first: int, last: int, parent: bytes = b"") -> Iterator[bytes]:
    """The radix path's digest after each whole block first..last-1 of token_ids, continuing from `parent`, the
    digest of the path up to block `first` (b"": the root)."""
    digest = parent
    for i in range(first, last):
        digest = chain_digest(digest, tuple(token_ids[i * block_size:(i + 1) * block_size]))
        yield digest


class LRUPolicy:
    """Evict the least recently matched or inserted leaf first."""

    def priority(self, node: RadixNode) -> int:
        return node.last_access


class RadixPrefixCache:
    def __init__(self, block_size: int, policy=None, on_evict=None):
        """on_evict(block, digest): called for each block evict() drops, before it can be reused."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.policy = policy or LRUPolicy()
        self.on_evict = on_evict
        self.root = RadixNode(key=(), block=-1, parent=None)
        self.root.lock_ref = 1  # the root is never evicted
        self._clock = itertools.count(1)
        self.num_blocks = 0  # blocks held by the tree
        self.digests: set[bytes] = set()  # of every node: what the tiers' read-ahead skips (read from other threads)
        self.num_locked_blocks = 0  # of those, blocks some sequence is using
        self.num_match_queries = 0
        self.num_matched_tokens = 0
        self.num_evicted_blocks = 0

    @property
    def num_evictable_blocks(self) -> int:
        return self.num_blocks - self.num_locked_blocks

    def _keys(self, token_ids) -> list[tuple[int, ...]]:
        bs = self.block_size
        return [tuple(token_ids[i : i + bs]) for i in range(0, len(token_ids) - bs + 1, bs)]

    def match(self, token_ids) -> MatchResult:
        """Longest cached prefix of token_ids, in whole blocks."""
        node, blocks, now = self.root, [], next(self._clock)
        for key in self._keys(token_ids):
            child = node.children.get(key)
            if child is None:
                break
            child.last_access = now
            blocks.append(child.block)
            node = child
        self.num_match_queries += 1
        self.num_matched_tokens += len(blocks) * self.block_size
        return MatchResult(tuple(blocks), len(blocks) * self.block_size, node)

    def insert(self, token_ids, blocks) -> InsertResult:
        """Cache the full blocks of token_ids, whose K/V live in `blocks` (one per full block).

        Where the tree already holds a block for the same tokens it keeps its own.
        """
        keys = self._keys(token_ids)
        if len(blocks) < len(keys):
            raise ValueError(f"{len(keys)} full blocks of tokens but only {len(blocks)} block ids")
        node, adopted, now = self.root, [], next(self._clock)
        for key, block in zip(keys, blocks):
            child = node.children.get(key)
            if child is None:
                child = RadixNode(key=key, block=block, parent=node, digest=chain_digest(node.digest, key))
                node.children[key] = child
                self.digests.add(child.digest)
                adopted.append(block)
                self.num_blocks += 1
            child.last_access = now
            node = child
        return InsertResult(node, tuple(adopted))

    def lock(self, node: RadixNode) -> None:
        """Protect node and its ancestors from eviction (one lock per using sequence)."""
        while node is not self.root:
            if node.lock_ref == 0:
                self.num_locked_blocks += 1
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: RadixNode) -> None:
        while node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("unlock of a node that is not locked")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.num_locked_blocks -= 1
            node = node.parent

    def evict(self, num_blocks: int) -> tuple[int, ...]:
        """Drop up to num_blocks unlocked leaves in policy order; returns their blocks."""
        leaves = [(self.policy.priority(n), i, n) for i, n in enumerate(self._unlocked_leaves())]
        heapq.heapify(leaves)
        tie = itertools.count(len(leaves))
        evicted: list[int] = []
        while leaves and len(evicted) < num_blocks:
            _, _, node = heapq.heappop(leaves)
            parent = node.parent
            del parent.children[node.key]
            self.digests.discard(node.digest)
            node.parent = None
            evicted.append(node.block)
            if self.on_evict is not None:
                self.on_evict(node.block, node.digest)
            self.num_blocks -= 1
            if parent is not self.root and parent.is_leaf and parent.lock_ref == 0:
                heapq.heappush(leaves, (self.policy.priority(parent), next(tie), parent))
        self.num_evicted_blocks += len(evicted)
        return tuple(evicted)

    def _unlocked_leaves(self) -> list[RadixNode]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node.is_leaf and node.lock_ref == 0:
                out.append(node)
            stack.extend(node.children.values())
        return out

    def all_blocks(self) -> list[int]:
        """Every block the tree holds (for invariant checks)."""
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node.block)
            stack.extend(node.children.values())
        return out
