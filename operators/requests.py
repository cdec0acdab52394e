"""What a caller asks the LLM engine for, and what it gets back. Plain data, no tensors."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the generated text, enforced token by token (runtime/structured.py).

    kind: 'json_schema' (spec: the schema as JSON text), 'json_object' (any JSON object; spec ''), 'regex' (the
    text must match the pattern in full), 'choice' (spec: a JSON list of the allowed strings), 'grammar' (Lark)."""
    kind: str
    spec: str = ""

    KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"structured output kind must be one of {self.KINDS}, got {self.kind!r}")

    def describe(self) -> str:
        return self.kind if self.kind == "json_object" else f"{self.kind} {self.spec[:60]}"


# Temperatures below this sample greedily (vLLM's _SAMPLING_EPS): dividing logits by them overflows fp32, and
# the distribution they describe is the argmax's to within fp32 anyway.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 (or below GREEDY_TEMPERATURE) means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely
    structured: StructuredOutput | None = None  # the text must follow this (JSON schema, regex, choice, grammar)
    # vLLM's semantics: presence / frequency penalties on the tokens generated so far (logit -= p * seen,
    # -= f * count), repetition penalty on prompt and output tokens (positive logits / r, negative * r),
    # min_p drops tokens under min_p x the most likely one's probability, logit_bias adds to token ids' logits
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    # beam search (runtime/beam_search.py drives the engine with one-token steps): width > 1, ranked by
    # cum_logprob / length ** length_penalty
    beam_width: int = 1
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.beam_width <= 16:
            raise ValueError(f"beam_width must be in [1, 16], got {self.beam_width}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 0 < self.repetition_penalty < math.inf:
            raise ValueError(f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not all(-100.0 <= b <= 100.0 for _, b in self.logit_bias):
            raise ValueError("logit_bias values must be in [-100, 100]")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be >= 0 and finite, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def argmax_only(self) -> bool:
        """Greedy, and nothing else read from the logits: no logprobs, penalties, bias, grammar or beams (the
        engine then needs only each row's argmax, which codegen.greedy_screen finds without every logit)."""
        return (self.greedy and not self.shapes_logits and self.logprobs is None and self.structured is None
                and self.beam_width == 1)

    @property
    def shapes_logits(self) -> bool:
        """Penalties or biases change the logits before sampling (greedy included)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0  # lower runs first and is preempted last (vLLM's convention)
    request_id: str | None = None


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token's log-probability under the model, and the most likely alternatives.

    Taken from log_softmax of the model's raw logits, before temperature, top-k / top-p and
    ignore_eos masking (what OpenAI and vLLM report): the model's belief, not the sampler's.
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass
class GenerationResult:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or stop string), "length", "cancelled"
    num_cached_prompt_tokens: int = 0
    logprobs: list[TokenLogprobs] | None = None  # one per output token, when SamplingParams.logprobs asked
    cache_tier_hits: dict[str, int] = field(default_factory=dict)  # cached prompt tokens by tier (memory/host/disk)


@dataclass(frozen=True)
class ScoreRequest:
    """Log-probability of `continuation_token_ids` following `prompt_token_ids` (classify's likelihoods).

    Runs through the engine like a generation (batched, prefix-cached), computes no new tokens.
    """

    prompt_token_ids: tuple[int, ...]
    continuation_token_ids: tuple[int, ...]
    priority: int = 0
    request_id: str | None = None

    def __post_init__(self) -> None:
        if not self.continuation_token_ids:
            raise ValueError("a score request needs at least one continuation token")


@dataclass
class ScoreResult:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    continuation_token_ids: tuple[int, ...]
    token_logprobs: list[float]  # log p(continuation[i] | prompt + continuation[:i])
    finish_reason: str  # "scored" or "cancelled"
    num_cached_prompt_tokens: int = 0
    cache_tier_hits: dict[str, int] = field(default_factory=dict)  # cached prompt tokens by tier (memory/host/disk)

    @property
    def logprob(self) -> float:
        return sum(self.token_logprobs)
