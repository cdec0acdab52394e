"""A per-request output-length predictor learned online: the nearest earlier prompts vote.

Online requests share one template (the whole prompt is the request's), so per-template
statistics cannot tell a story request from a yes/no question. This predictor keeps the
last `capacity` finished requests as (prompt features, output length) and predicts a new
prompt's length from its k most similar earlier prompts (cosine similarity of hashed token
bigram counts: prompts that say "write a long story" resemble each other, whatever the
topic) - the proxy-model family of predictors in the survey, at the cost of one small
matrix-vector product per request. With no neighbour similar enough it falls back to the
mean of everything seen, then to max_tokens.

>>> p = LengthPredictor()
>>> for topic in ("cats", "ships", "tea", "rain"):
...     p.record(encode(f"write a long story about {topic}"), 200)
...     p.record(encode(f"answer yes or no: is {topic} wet"), 3)
>>> p.predict(encode("write a long story about snow"), 256)
(200.0, 'the 4 most similar of 8 earlier requests (similarity 0.82-0.82)')
>>> p.predict(encode("answer yes or no: is snow wet"), 256)[0]
3.0
"""
from __future__ import annotations

import threading
import zlib

import numpy as np

DIM = 512  # hashed feature buckets
K = 4  # neighbours that vote
MIN_SIMILARITY = 0.3  # below this an earlier prompt says nothing about this one
MIN_HISTORY = 4  # fewer earlier requests than this: no prediction of our own


def encode(text: str) -> tuple[int, ...]:
    """A stand-in tokenizer for examples and tests: one id per word."""
    return tuple(zlib.crc32(w.encode()) & 0xFFFF for w in text.lower().split())


def features(prompt: tuple[int, ...] | list[int]) -> np.ndarray:
    """Unit vector of hashed unigram and bigram counts of the prompt's tokens [DIM] float32."""
    v = np.zeros(DIM, np.float32)
    ids = np.asarray(prompt, np.int64)
    if ids.size:
        np.add.at(v, (ids * 2654435761) % DIM, 1.0)
        if ids.size > 1:
            np.add.at(v, (ids[:-1] * 2246822519 + ids[1:] * 3266489917) % DIM, 1.0)
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


class LengthPredictor:
    def __init__(self, capacity: int = 2048) -> None:
        self.capacity = capacity
        self._vectors = np.zeros((capacity, DIM), np.float32)
        self._lengths = np.zeros(capacity, np.float32)
        self._count = 0  # examples ever recorded; the ring holds the last `capacity`
        self._lock = threading.Lock()  # record() on the event loop, predict() on the engine thread

    def __len__(self) -> int:
        return min(self._count, self.capacity)

    def __getstate__(self) -> dict:  # a copy of what it learned goes to an engine replica's process
        with self._lock:
            return {k: v for k, v in vars(self).items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    def record(self, prompt, output_tokens: int) -> None:
        with self._lock:
            slot = self._count % self.capacity
            self._vectors[slot] = features(prompt)
            self._lengths[slot] = output_tokens
            self._count += 1

    def predict(self, prompt, max_tokens: int) -> tuple[float, str]:
        """(expected output tokens, where the figure came from)."""
        n = len(self)
        if n < MIN_HISTORY:
            return float(max_tokens), f"max_tokens (only {n} earlier requests)"
        with self._lock:
            similarity = self._vectors[:n] @ features(prompt)  # [n]
            lengths = self._lengths[:n].copy()
        nearest = np.argsort(-similarity, kind="stable")[:K]
        nearest = nearest[similarity[nearest] >= MIN_SIMILARITY]
        if nearest.size == 0:
            return float(min(lengths.mean(), max_tokens)), f"the mean of {n} earlier requests (none similar)"
        value = float(min(np.mean(lengths[nearest]), max_tokens))
        lo, hi = similarity[nearest].min(), similarity[nearest].max()
        return value, f"the {nearest.size} most similar of {n} earlier requests (similarity {lo:.2f}-{hi:.2f})"

    def expected_tokens(self, request) -> float:
        """The engine's spf predictor: expected output tokens of an operators.requests.GenerationRequest."""
        return self.predict(request.prompt_token_ids, request.sampling.max_tokens)[0]

    def spread(self) -> tuple[float, float, int] | None:
        """(p10, p90) of the recorded output lengths and how many, or None before MIN_HISTORY."""
        n = len(self)
        if n < MIN_HISTORY:
            return None
        with self._lock:
            lengths = self._lengths[:n].copy()
        return float(np.percentile(lengths, 10)), float(np.percentile(lengths, 90)), n
