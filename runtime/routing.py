"""Cache-aware routing of requests over engine replicas, the SGLang router's policy: a request goes to the replica
whose prefix cache most likely holds the longest start of its prompt, unless the replicas' loads have drifted too
far apart, when it goes to the least loaded one.

The router cannot look into the replicas' caches; it keeps an approximate copy of each: the radix-path digests of
the whole prompt blocks it sent there (the digests the replica's own prefix cache keys its blocks by, so a match
here is a match there), in LRU order, at most the replica's pool size. A replica that died comes back empty.

    router = CacheAwareRouter(replicas=2, block_size=16, capacity_blocks=4096)
    route = router.route(prompt_token_ids)   # Route(replica=1, reason='cache', matched_tokens=512)
    router.started(route.replica, prompt_token_ids)
    ...
    router.finished(route.replica)
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from runtime.prefix_cache import block_digests

# SGLang's cache_threshold: below this fraction of the prompt matched, the prompt goes where the least is cached
CACHE_THRESHOLD = 0.5
# Loads (requests in flight) too far apart to follow the cache: max - min above BALANCE_ABS and max above
# BALANCE_REL x min. Smaller than SGLang's 32 as a CPU replica's batch is smaller than a GPU's.
BALANCE_ABS, BALANCE_REL = 8, 1.5


@dataclass(frozen=True)
class Route:
    replica: int
    reason: str  # 'cache': longest cached prefix; 'spread': least cached; 'balance': least loaded
    matched_tokens: int  # prompt tokens the chosen replica is expected to hold


class CachedBlocks:
    """What one prefix cache holds, as far as an observer can tell: the radix-path digests of the whole blocks of
    the prompts it computed, least recently used first, at most capacity_blocks. A path's root is evicted last."""

    def __init__(self, block_size: int, capacity_blocks: int):
        self.block_size, self.capacity_blocks = block_size, capacity_blocks
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._digests)

    def matched_tokens(self, prompt, limit: int | None = None) -> int:
        """Leading tokens of the prompt in whole cached blocks (within its first `limit` tokens, when given)."""
        n = 0
        tokens = len(prompt) if limit is None else min(limit, len(prompt))
        for digest in block_digests(prompt, self.block_size, 0, tokens // self.block_size):
            if digest not in self._digests:
                break
            n += 1
        return n * self.block_size

    def remember(self, prompt) -> None:
        """The cache computed this prompt: its whole blocks are there now."""
        digests = self._digests
        for digest in reversed(list(block_digests(prompt, self.block_size, 0, len(prompt) // self.block_size))):
            digests[digest] = None  # deeper blocks first, so the root is the most recently used
            digests.move_to_end(digest)
        while len(digests) > self.capacity_blocks:
            digests.popitem(last=False)

    def clear(self) -> None:
        self._digests.clear()


class CacheAwareRouter:
    def __init__(self, replicas: int, block_size: int, capacity_blocks: int, cache_threshold: float = CACHE_THRESHOLD,
                 balance_abs: int = BALANCE_ABS, balance_rel: float = BALANCE_REL):
        self.cache_threshold, self.balance_abs, self.balance_rel = cache_threshold, balance_abs, balance_rel
        self.cached = [CachedBlocks(block_size, capacity_blocks) for _ in range(replicas)]
        self.load = [0] * replicas  # requests in flight on each replica
        self.up = [True] * replicas

    def matched_tokens(self, replica: int, prompt) -> int:
        return self.cached[replica].matched_tokens(prompt)

    def route(self, prompt, avoid: frozenset[int] = frozenset(), among: tuple[int, ...] | None = None) -> Route:
        """The replica for a request with this prompt, one of `among` (default: all; with prefill/decode
        disaggregation the prefill or the decode replicas); `avoid`: replicas it just failed on. Every replica
        that is up and not avoided is a candidate; when none is, any that is not avoided, then any at all."""
        pool = list(range(len(self.load))) if among is None else list(among)
        candidates = ([k for k in pool if self.up[k] and k not in avoid] or [k for k in pool if k not in avoid]
                      or pool)
        lightest = min(candidates, key=lambda k: (self.load[k], k))
        heaviest = max(self.load[k] for k in candidates)
        if (heaviest - self.load[lightest] > self.balance_abs
                and heaviest > self.balance_rel * self.load[lightest]):
            return Route(lightest, "balance", self.matched_tokens(lightest, prompt))
        matched = {k: self.matched_tokens(k, prompt) for k in candidates}
        best = max(candidates, key=lambda k: (matched[k], -self.load[k], -k))
        if matched[best] > self.cache_threshold * len(prompt):
            return Route(best, "cache", matched[best])
        emptiest = min(candidates, key=lambda k: (len(self.cached[k]), self.load[k], k))
        return Route(emptiest, "spread", matched[emptiest])

    def started(self, replica: int, prompt) -> None:
        """A request with this prompt runs on `replica` now: its blocks will be cached there."""
        self.load[replica] += 1
        self.remember(replica, prompt)

    def remember(self, replica: int, prompt) -> None:
        """`replica` computed this prompt (a request routed there, or a range of SQL's rows)."""
        self.cached[replica].remember(prompt)

    def finished(self, replica: int) -> None:
        self.load[replica] -= 1

    def lost(self, replica: int) -> None:
        """The replica died: nothing is routed there until `restored`, and it restarts with an empty cache."""
        self.up[replica] = False
        self.cached[replica].clear()

    def restored(self, replica: int) -> None:
        self.up[replica] = True
