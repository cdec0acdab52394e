"""The streamed text of a choice never runs ahead of its final text, even when a stop string spans tokens."""
from __future__ import annotations

import pytest

from operators.requests import GenerationResult
from sqlm.server.completions import Choice
from runtime.engine_loop import TokenOutput


def token(text: str, i: int) -> TokenOutput:
    return TokenOutput(0, i, text, None, float(i))


def last(final_text: str, reason: str, i: int) -> TokenOutput:
    result = GenerationResult("r", (1,), list(range(i + 1)), final_text, reason)
    return TokenOutput(0, i, "", reason, float(i), result=result)


def stream(choice: Choice, deltas: list[str], final_text: str, reason: str) -> list[str]:
    sent = [choice.push(token(d, i)) for i, d in enumerate(deltas)]
    return sent + [choice.push(last(final_text, reason, len(deltas)))]


def test_a_stop_string_split_across_tokens_is_never_sent():
    # The engine cuts its text at "\n\n" only when the second "\n" arrives; the first was held back.
    sent = stream(Choice(0, ("\n\n",)), ["Hello", " world\n"], "Hello world", "stop")
    assert sent == ["Hello", " world", ""]


def test_held_back_text_is_released_when_it_turns_out_not_to_stop():
    sent = stream(Choice(0, ("END",)), ["an E", "N", "igma"], "an ENigma", "length")
    assert sent == ["an ", "", "ENigma", ""]


@pytest.mark.parametrize("stops", [(), ("zz",), ("x", "yy")])
def test_everything_is_sent_once_without_a_stop(stops):
    deltas = ["The ", "quick ", "brown ", "fox"]
    sent = stream(Choice(0, stops), deltas, "".join(deltas), "length")
    assert "".join(sent) == "The quick brown fox"


def test_tokens_are_timed_for_the_metrics():
    choice = Choice(0, ())
    stream(choice, ["a", "b"], "ab", "length")
    assert choice.times == [0.0, 1.0, 2.0]
    assert choice.finish_reason == "length"
