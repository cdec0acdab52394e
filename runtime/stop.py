"""Stop conditions shared by the reference loop and the engine."""
from __future__ import annotations

from operators.requests import SamplingParams


def find_stop(text: str, stops: tuple[str, ...], search_from: int = 0) -> int | None:
    """Index where the earliest stop string starts in text[search_from:] or later, else None."""
    hits = [i for s in stops if (i := text.find(s, max(0, search_from - len(s) + 1))) != -1]
    return min(hits) if hits else None


def finish_reason(token_id: int, num_output: int, params: SamplingParams, eos_ids: frozenset[int]) -> str | None:
    if token_id in eos_ids and not params.ignore_eos:
        return "stop"
    if num_output >= params.max_tokens:
        return "length"
    return None
