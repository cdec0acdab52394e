"""A sequence's acceptance window: the latest drafts only, verified or scored as shadows."""
from __future__ import annotations

import pytest

from runtime.acceptance import WINDOW_DRAFTS, AcceptanceWindow


@pytest.mark.parametrize("proposals, drafted, accepted", [
    ([(4, 0)] * 4, 16, 0),  # exactly the window
    ([(4, 0)] * 4 + [(4, 4)], 16, 4),  # the oldest left once the rest fill the window
    ([(4, 0)] * 4 + [(4, 4)] * 4, 16, 16),  # a stretch that quotes replaces one that did not
    ([(3, 1)] * 3, 9, 3),  # not yet full: everything counts
    ([(8, 8), (3, 0), (3, 0), (3, 0), (3, 0)], 20, 8),  # the 8 stays: without it 12 < WINDOW_DRAFTS
])
def test_the_window_keeps_the_latest_drafts_that_fill_it(proposals, drafted, accepted):
    window = AcceptanceWindow()
    for d, a in proposals:
        window.add(d, a)
    assert (window.drafted, window.accepted) == (drafted, accepted)
    assert window.drafted >= min(WINDOW_DRAFTS, sum(d for d, _ in proposals))


@pytest.mark.parametrize("drafts, emitted, settled, accepted", [
    ([7, 8, 9], [], False, None),  # nothing emitted yet
    ([7, 8, 9], [7, 8], False, None),  # matches so far, more to come
    ([7, 8, 9], [7, 5], True, 1),  # the second missed
    ([7, 8, 9], [5], True, 0),
    ([7, 8, 9], [7, 8, 9], True, 3),  # all three: a verified step would have taken them all
    ([7, 8, 9], [7, 8, 9, 4, 4], True, 3),  # scored late (the sequence did not decode meanwhile)
])
def test_shadow_drafts_are_scored_against_the_tokens_that_follow(drafts, emitted, settled, accepted):
    window, prefix = AcceptanceWindow(), [1, 2, 3]
    window.shadow(len(prefix), drafts)
    assert window.settle(prefix + emitted) is settled
    assert (window.drafted, window.accepted) == ((len(drafts), accepted) if settled else (0, 0))
    if settled:  # scored once: nothing pending after
        assert window.settle(prefix + emitted + [7, 8, 9]) and window.drafted == len(drafts)


def test_an_empty_proposal_leaves_nothing_to_score():
    window = AcceptanceWindow()
    window.shadow(3, [])
    assert window.settle([1, 2, 3]) and window.drafted == 0
