"""Constrained decoding: a token mask per step from llguidance's matcher, so the text follows its constraint.

A `Grammars` belongs to one tokenizer: it builds llguidance's view of the vocabulary once
and keeps each constraint's compiled grammar (keyed by kind and spec), so a batch of rows
with one JSON schema compiles it once. Each sequence gets a matcher of its own; before a
step's sampling, its row's logits outside the matcher's allowed tokens become -inf, and
the sampled token advances the matcher. When the grammar is complete and allows nothing
more, the sequence ends ('stop') without another step.
"""
from __future__ import annotations

import json
import re
import threading

import numpy as np
import torch

from operators.requests import StructuredOutput


class StructuredOutputError(ValueError):
    """A constraint that cannot be compiled (an invalid schema, regex or grammar)."""


# JSON as json.dumps writes it: one space after ',' and ':', no other whitespace (a small model given free
# whitespace can spend its tokens on it)
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_of(s: StructuredOutput) -> str:
    """llguidance's grammar text for a constraint."""
    from llguidance import LLMatcher

    if s.kind == "json_schema":
        try:
            schema = json.loads(s.spec)
        except ValueError as e:
            raise StructuredOutputError(f"json_schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise StructuredOutputError("json_schema must be a JSON object")
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
    if s.kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_LAYOUT)
    if s.kind == "regex":
        return LLMatcher.grammar_from_regex(s.spec)
    if s.kind == "choice":
        choices = json.loads(s.spec)
        if not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
            raise StructuredOutputError("choice must be a non-empty list of strings")
        return LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in choices))
    return LLMatcher.grammar_from_lark(s.spec)


def check(s: StructuredOutput) -> None:
    """Raise StructuredOutputError naming what is wrong with the constraint (no tokenizer needed)."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar_of(s))
    if error and not error.startswith("WARNING"):
        raise StructuredOutputError(f"{s.kind}: {' '.join(error.split())}")


class Grammars:
    def __init__(self, tokenizer, vocab_size: int) -> None:
        """tokenizer: catalog.tokenizer.Tokenizer; vocab_size: the model's logits width."""
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._lltokenizer = None
        self._grammars: dict[StructuredOutput, str] = {}
        self._lock = threading.Lock()

    def _llg_tokenizer(self):
        from llguidance import LLTokenizer

        if self._lltokenizer is None:  # ~1 s: the vocabulary's byte strings, once per engine
            self._lltokenizer = LLTokenizer(self.tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                                            eos_token=sorted(self.tokenizer.eos_token_ids))
        return self._lltokenizer

    def matcher(self, s: StructuredOutput):
        from llguidance import LLMatcher

        with self._lock:
            grammar = self._grammars.get(s)
            if grammar is None:
                grammar = self._grammars[s] = grammar_of(s)
            m = LLMatcher(self._llg_tokenizer(), grammar, log_level=0)
        if m.is_error():
            raise StructuredOutputError(f"{s.kind}: {' '.join(m.get_error().split())}")
        return m


def allowed_tokens(matcher, vocab_size: int) -> torch.Tensor:
    """The matcher's next-token mask as a bool tensor [vocab_size] (llguidance packs 32 tokens a word, low bit
    first)."""
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    allowed = np.zeros(vocab_size, dtype=bool)
    n = min(vocab_size, bits.size)
    allowed[:n] = bits[:n].astype(bool)
    return torch.from_numpy(allowed)
