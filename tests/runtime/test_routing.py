"""The cache-aware router (SGLang's policy): repeats of a prefix go where it is cached, new prefixes go where the
least is cached, drifted loads are balanced, a lost replica gets nothing, and its copy of each cache stays bounded."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from runtime.routing import CacheAwareRouter

BS = 4


def prompt(seed: int, blocks: int = 4, tail: int = 1) -> tuple[int, ...]:
    return tuple(seed * 1000 + i for i in range(blocks * BS)) + tuple(range(tail))


def send(router: CacheAwareRouter, p) -> tuple[int, str]:
    route = router.route(p)
    router.started(route.replica, p)
    router.finished(route.replica)
    return route.replica, route.reason


@pytest.mark.parametrize("asks, expected", [
    # three new prefixes spread (least cached first), then each repeat goes to where its prefix is
    ([1, 2, 3, 1, 2, 3], [(0, "spread"), (1, "spread"), (0, "spread"), (0, "cache"), (1, "cache"), (0, "cache")]),
    # with one prefix in play every repeat follows it, though replica 1 is idle
    ([1, 1, 1], [(0, "spread"), (0, "cache"), (0, "cache")]),
])
def test_routes(asks, expected):
    router = CacheAwareRouter(2, BS, capacity_blocks=100)
    assert [send(router, prompt(a)) for a in asks] == expected


def test_a_short_shared_start_is_not_worth_following():
    router = CacheAwareRouter(2, BS, capacity_blocks=100)
    send(router, prompt(1, blocks=1) + prompt(2, blocks=4))  # 1 of 5 blocks would match the next prompt
    assert router.route(prompt(1, blocks=1) + prompt(3, blocks=4)).reason == "spread"
    assert router.route(prompt(1, blocks=1) + prompt(3, blocks=4)).replica == 1


def test_drifted_loads_go_to_the_least_loaded_replica_even_with_a_cache_hit():
    router = CacheAwareRouter(2, BS, capacity_blocks=100, balance_abs=3, balance_rel=1.5)
    p = prompt(1)
    for _ in range(4):
        router.started(0, p)  # four in flight on replica 0, none on 1
    route = router.route(p)
    assert (route.replica, route.reason) == (1, "balance")
    router.finished(0)  # 3 vs 0: not past balance_abs any more
    assert router.route(p).reason == "cache"


def test_a_lost_replica_gets_nothing_until_restored_and_comes_back_empty():
    router = CacheAwareRouter(2, BS, capacity_blocks=100)
    send(router, prompt(1))
    assert router.route(prompt(1)).replica == 0
    router.lost(0)
    assert router.route(prompt(1)).replica == 1
    assert router.route(prompt(1), avoid=frozenset({1})).replica == 0  # nothing else left: the lost one waits
    router.restored(0)
    assert router.matched_tokens(0, prompt(1)) == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=40), st.integers(1, 12))
def test_the_copy_of_a_cache_is_bounded_and_the_latest_prompt_matches(asks, capacity):
    router = CacheAwareRouter(3, BS, capacity_blocks=capacity)
    for seed, blocks in asks:
        p = prompt(seed, blocks)
        k, _ = send(router, p)
        assert all(len(c) <= capacity for c in router.cached)
        # deeper blocks are evicted first, so the latest prompt's start always matches as far as capacity allows
        assert router.matched_tokens(k, p) == min(blocks, capacity) * BS
