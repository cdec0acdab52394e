"""A sequence's recent draft acceptance, which decides whether it keeps drafting (runtime/speculation.still_pays).

Acceptance comes in stretches: a summary drafts nothing useful until it starts quoting its document, then drafts
well. So the rate is over the latest drafts only, and a sequence that stopped drafting keeps proposing where
proposing is free (prompt lookup: a few dict probes) and scores each proposal against the tokens that follow
without verifying it (a "shadow" draft: a sampled token equals a point-mass draft with the probability the
rejection rule accepts it, so the count is the same in expectation). A stretch that starts quoting brings drafting
back, as one that stops quoting ends it. No torch here.
"""
from __future__ import annotations

from collections import deque

WINDOW_DRAFTS = 16  # the rate is over the latest proposals that add up to at least this many drafted tokens


class AcceptanceWindow:
    def __init__(self) -> None:
        self._proposals: deque[tuple[int, int]] = deque()  # (drafted, accepted), oldest first
        self.drafted = self.accepted = 0  # over the window
        self._shadow: tuple[int, list[int]] | None = None  # (tokens when proposed, drafts) not yet scored

    def add(self, drafted: int, accepted: int) -> None:
        """A verified (or scored shadow) proposal; the oldest leave while the rest still fill the window."""
        self._proposals.append((drafted, accepted))
        self.drafted, self.accepted = self.drafted + drafted, self.accepted + accepted
        while self.drafted - self._proposals[0][0] >= WINDOW_DRAFTS:
            old_drafted, old_accepted = self._proposals.popleft()
            self.drafted, self.accepted = self.drafted - old_drafted, self.accepted - old_accepted

    def shadow(self, position: int, drafts: list[int]) -> None:
        """Drafts proposed after the sequence's first `position` tokens and not verified: scored by `settle`."""
        self._shadow = (position, list(drafts)) if drafts else None

    def settle(self, tokens: list[int]) -> bool:
        """Score the pending shadow drafts against the tokens emitted since; False while they all match so far
        and more are to come (the next proposal waits, as a verified step would)."""
        if self._shadow is None:
            return True
        position, drafts = self._shadow
        emitted = tokens[position:]
        run = 0
        while run < min(len(drafts), len(emitted)) and drafts[run] == emitted[run]:
            run += 1
        if run == len(emitted) and run < len(drafts):
            return False
        self.add(len(drafts), run)
        self._shadow = None
        return True
