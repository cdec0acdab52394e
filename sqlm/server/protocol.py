"""OpenAI's request and response shapes (the subset sqlm serves), as pydantic models.

A request field sqlm does not honour is a 400 naming it (unknown fields included:
`use_beam_search`, `tool_choice`, ... would otherwise be answered as if absent), so a caller never gets a silently different answer. Value ranges follow
OpenAI's API reference; a violation becomes a 400 with the parameter's name. Text must
be valid Unicode (a lone surrogate is refused), and one request holds at most
MAX_SEQUENCES sequences (prompts x n).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from operators.requests import StructuredOutput
from runtime.structured import check as check_structured

MAX_N = 16  # choices per request: each one is a sequence in the shared batch
MAX_SEQUENCES = 256  # prompts x n per request: one request must not hold the engine for everyone else
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
# the fields a beam search does not honour, with the values that leave it unchanged (given explicitly: accepted)
BEAM_SEARCH_NEUTRAL = {"stream": (False,), "stop": ([], None), "response_format": (None,),
                       "structured_outputs": (None,), "temperature": (0.0,), "top_p": (1.0,), "top_k": (0,),
                       "min_p": (0.0,), "seed": (None,), "presence_penalty": (0.0,), "frequency_penalty": (0.0,),
                       "repetition_penalty": (1.0,), "logit_bias": (None, {}), "ignore_eos": (False,)}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def valid_text(value: str) -> str:
    """`value`, unless it holds a lone surrogate (JSON's "\\ud800" escapes decode to one): no tokenizer or
    UTF-8 output can carry it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains an invalid Unicode character (a lone surrogate) at position {e.start}") from None
    return value


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    json_schema: dict = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text, any JSON object, or JSON valid against a schema."""
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema' and only there")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's structured_outputs: exactly one of json (a schema), json_object, regex, choice, grammar (Lark)."""
    model_config = ConfigDict(extra="forbid")

    json_: dict | str | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("json_", "json_object", "regex", "choice", "grammar") if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError("give exactly one of json, json_object, regex, choice, grammar")
        return self


def _constraint(kind: str, spec: str = "") -> StructuredOutput:
    s = StructuredOutput(kind, spec)
    check_structured(s)  # an invalid schema, regex or grammar is the request's error, before anything runs
    return s


class _Request(BaseModel):
    """Sampling fields common to both endpoints. Types are strict, as OpenAI's are: "5" is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # extension (vLLM's): 0 means no cut
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # choice j samples with seed + j
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)  # extension (vLLM's)
    min_p: float = Field(0.0, ge=0.0, le=1.0)  # extension (vLLM's)
    logit_bias: dict[str, float] | None = None  # token id (as a string, OpenAI's form) -> bias in [-100, 100]
    ignore_eos: bool = False  # extension (vLLM's): generate exactly max_tokens tokens
    priority: int = 0  # extension (vLLM's): lower runs first; a waiting urgent request preempts running ones
    user: str | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None  # extension (vLLM's)
    use_beam_search: bool = False  # extension (vLLM's): the n best of max(n, best_of) beams, not samples
    length_penalty: float = 1.0  # extension (vLLM's): beams rank by cum_logprob / length ** length_penalty
    _structured: StructuredOutput | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _beam_search_alone(self):
        """A beam search ranks the model's own log-probabilities: what would sample or reshape them is refused
        by name rather than ignored (temperature 0, the search's own determinism, is accepted)."""
        if self.use_beam_search:
            for name, neutral in BEAM_SEARCH_NEUTRAL.items():
                if name in self.model_fields_set and getattr(self, name) not in neutral:
                    raise ValueError(f"{name}: cannot be combined with use_beam_search")
        elif "length_penalty" in self.model_fields_set and self.length_penalty != 1.0:
            raise ValueError("length_penalty: only ranks beams; it needs use_beam_search")
        return self

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed with stream: true")
        return self

    @property
    def beam_width(self) -> int:
        """Beams searched (0: not a beam search request)."""
        return max(self.n, getattr(self, "best_of", None) or 1) if self.use_beam_search else 0

    @model_validator(mode="after")
    def _one_constraint(self):
        if self.structured_outputs is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise ValueError("structured_outputs: give response_format or structured_outputs, not both")
        try:
            self._structured = self._compile_constraint()
        except ValueError as e:  # an invalid schema, regex or grammar: named by the field that carried it
            field = "structured_outputs" if self.structured_outputs is not None else "response_format"
            raise ValueError(f"{field}: {e}") from None
        if self.ignore_eos and self._structured is not None:
            raise ValueError("ignore_eos: cannot be combined with structured output (the format decides where the "
                             "text ends)")
        return self

    def _compile_constraint(self) -> StructuredOutput | None:
        f, s = self.response_format, self.structured_outputs
        if f is not None and f.type == "json_object":
            return _constraint("json_object")
        if f is not None and f.type == "json_schema":
            return _constraint("json_schema", json.dumps(f.json_schema.json_schema))
        if s is None:
            return None
        if s.json_ is not None:
            return _constraint("json_schema", s.json_ if isinstance(s.json_, str) else json.dumps(s.json_))
        if s.json_object:
            return _constraint("json_object")
        if s.regex is not None:
            return _constraint("regex", s.regex)
        if s.choice is not None:
            return _constraint("choice", json.dumps(s.choice))
        return _constraint("grammar", s.grammar)

    @property
    def structured(self) -> StructuredOutput | None:
        return self._structured

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return [valid_text(s) for s in stops]

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        for token, bias in (value or {}).items():
            if not (token.isascii() and token.isdigit()):
                raise ValueError(f"keys are token ids (ASCII digits), got {token!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"values must be in [-100, 100], got {bias}")
        return value

    @property
    def logit_biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(t), b) for t, b in (self.logit_bias or {}).items())

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return valid_text(value)


class ChatMessage(BaseModel):
    """A message's role and text; the fields chat templates cannot carry (name, tool calls) are refused."""
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value):
        """A list of parts must be text parts with no other field (named here: pydantic would report the
        union's first branch, 'must be a string')."""
        for i, part in enumerate(value if isinstance(value, list) else []):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"part {i}: only text parts are supported, got {kind!r}")
            if extra := sorted(set(part) - {"type", "text"}):
                raise ValueError(f"part {i}: unsupported field(s) {', '.join(extra)}")
        return value

    @field_validator("content")
    @classmethod
    def _content(cls, value):
        return valid_text(value) if isinstance(value, str) else value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value):
        if value:
            raise ValueError("are not supported by this server")
        return value

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def num_top_logprobs(self) -> int | None:
        """None when no logprobs were asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict]:
        # 'developer' is OpenAI's newer name for 'system'; chat templates know only the latter.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value):
        def token_ids(x) -> bool:
            return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        ok = (isinstance(value, str) or token_ids(value)
              or (isinstance(value, list) and bool(value)
                  and (all(isinstance(x, str) for x in value) or all(token_ids(x) for x in value))))
        if not ok:
            raise ValueError("must be a string, an array of strings, an array of token ids, "
                             "or an array of token-id arrays (non-empty)")
        for text in [value] if isinstance(value, str) else value:
            if isinstance(text, str):
                valid_text(text)
        return value
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for legacy completions
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported(cls, value):
        if value:
            raise ValueError("is not supported by this server")
        return value

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of not in (None, 1):
            if not self.use_beam_search:
                raise ValueError("best_of: > 1 needs use_beam_search (sampled best_of is not supported)")
            if not self.n <= self.best_of <= 16:
                raise ValueError(f"best_of: must be in [n, 16], got {self.best_of}")
        return self

    @model_validator(mode="after")
    def _bounded(self):
        sequences = len(self.prompts()) * self.n
        if sequences > MAX_SEQUENCES:
            raise ValueError(f"prompt: {len(self.prompts())} prompts x n={self.n} make {sequences} sequences; "
                             f"at most {MAX_SEQUENCES} per request")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def num_top_logprobs(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: each a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1)


# --- responses -------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sqlm"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


_Request.model_rebuild()
