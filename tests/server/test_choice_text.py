"""The streamed text of a choice never runs ahead of its final text, even when a stop string spans tokens."""
from __future__ import annotations

import pytest

from operators.requests import GenerationResult, TokenLogprobs
from sqlm.server.completions import Choice
from runtime.engine_loop import TokenOutput


def token(text: str, i: int) -> TokenOutput:
    return TokenOutput(0, i, text, None, float(i), TokenLogprobs(i, -0.1 * i, ()))


def last(final_text: str, reason: str, i: int, text: str = "") -> TokenOutput:
    result = GenerationResult("r", (1,), list(range(i + 1)), final_text, reason)
    return TokenOutput(0, i, text, reason, float(i), TokenLogprobs(i, -0.1 * i, ()), result=result)


def stream(choice: Choice, deltas: list[str], final_text: str, reason: str) -> list[str]:
    sent = [choice.push(token(d, i))[0] for i, d in enumerate(deltas)]
    return sent + [choice.push(last(final_text, reason, len(deltas)))[0]]


def listed(choice: Choice) -> list[tuple[int, int]]:
    """(token id, where its text starts) of each logprobs entry the choice has sent."""
    return [(lp.token_id, start) for start, lp in choice.logprobs]


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


def test_a_tokens_logprobs_go_out_with_its_text_and_not_past_a_stop_string():
    choice = Choice(0, ("\n\n",))
    assert choice.push(token("Hello", 0)) == ("Hello", [(0, TokenLogprobs(0, 0.0, ()))])
    text, released = choice.push(token(" world\n", 1))
    assert (text, [lp.token_id for _, lp in released]) == (" world", [1])
    # the second "\n" completes the stop string: the engine's final text ends before it, and so do the entries
    choice.push(token("\n", 2))
    choice.push(last("Hello world", "stop", 3, text="Bye"))
    assert listed(choice) == [(0, 0), (1, 5)]


def test_without_a_stop_string_every_token_is_listed_even_those_without_text():
    # ignore_eos: EOS tokens decode to no text but are part of the content
    choice = Choice(0, ())
    stream(choice, ["a", "", "b", ""], "ab", "length")
    assert listed(choice) == [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2)]


def test_the_eos_that_ends_a_choice_is_not_listed():
    choice = Choice(0, (), unlisted=frozenset({4}))
    stream(choice, ["a", "b", "c", "d"], "abcd", "stop")
    assert [token_id for token_id, _ in listed(choice)] == [0, 1, 2, 3]
