"""OpenAI completion requests -> engine requests -> OpenAI responses (whole, or as SSE chunks).

One HTTP request becomes one GenerationRequest per (prompt, choice) and a plan over them
(planner/request.py: the engine's knobs, estimates, the template its output lengths are
recorded under); they join the shared engine's batch together and their tokens come back
through one RequestStream.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import jinja2
from fastapi import Request

from planner.lower import PhysicalPlan
from runtime.beam_search import beam_search, text_of
from runtime.engine import KVCacheTooSmallError
from runtime.errors import PromptTooLongError
from operators.requests import GenerationRequest, GenerationResult, SamplingParams, TokenLogprobs
from catalog.tokenizer import ChatTemplateError
from sqlm.server import protocol as P
from runtime.engine_loop import EngineFailure, EngineLoop, RequestStream, TokenOutput
from sqlm.server.errors import APIError, bad_request, context_length_exceeded, model_not_found
from sqlm.server.metrics import Metrics
from sqlm.server.planning import RequestPlanner


@dataclass(frozen=True)
class ServedModel:
    name: str
    tokenizer: object  # catalog.tokenizer.Tokenizer
    context: int  # max_position_embeddings
    vocab_size: int
    max_sequence_tokens: int  # prompt + output one sequence can hold: the context, or less if the KV pool is smaller
    planner: RequestPlanner
    created: int = field(default_factory=P.now)


@dataclass
class Job:
    """One HTTP generation request on its way through the engine."""

    id: str
    served: ServedModel
    prompts: list[list[int]]
    requests: list[GenerationRequest]  # prompt i, choice j at index i * n + j
    num_top_logprobs: int | None
    stops: tuple[str, ...]
    ignore_eos: bool
    arrival: float
    plan: PhysicalPlan
    planning_seconds: float


# --- requests ------------------------------------------------------------------------------------


def check_model(served: ServedModel, name: str) -> None:
    if name != served.name:
        raise model_not_found(name)


def chat_prompt(served: ServedModel, req: P.ChatCompletionRequest) -> list[int]:
    try:
        text = served.tokenizer.apply_chat_template(req.template_messages())
    except (ChatTemplateError, jinja2.TemplateError) as e:
        raise bad_request(f"messages cannot be rendered with the model's chat template: {e}", param="messages")
    # The template writes the BOS itself where the model wants one.
    return served.tokenizer.encode(text, add_special_tokens=False)


def completion_prompts(served: ServedModel, req: P.CompletionRequest) -> list[list[int]]:
    prompts = []
    for p in req.prompts():
        if isinstance(p, str):
            prompts.append(served.tokenizer.encode(p))
            continue
        if any(not 0 <= t < served.vocab_size for t in p):
            raise bad_request(f"prompt token ids must be in [0, {served.vocab_size})", param="prompt")
        prompts.append(list(p))
    return prompts


def sampling_params(served: ServedModel, req, prompt_len: int, choice: int, param: str) -> SamplingParams:
    """OpenAI's fields as the engine's SamplingParams; the context window is checked here, as OpenAI does."""
    if prompt_len == 0:
        raise bad_request("the prompt is empty: it must contain at least one token", param=param)
    room = served.context - prompt_len
    if room <= 0:
        raise context_length_exceeded(
            f"This model's maximum context length is {served.context} tokens. However, your prompt has "
            f"{prompt_len} tokens, which leaves no room for a completion. Please shorten the prompt.", param)
    max_tokens = req.max_new_tokens
    if max_tokens is not None and max_tokens > room:
        raise context_length_exceeded(
            f"This model's maximum context length is {served.context} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
            f"Please reduce the prompt or max_tokens.", "max_tokens")
    if max_tokens is None:  # OpenAI's default: as long as the sequence can grow
        max_tokens = max(1, served.max_sequence_tokens - prompt_len)
    if any(t >= served.vocab_size for t, _ in req.logit_biases):
        raise bad_request(f"logit_bias token ids must be in [0, {served.vocab_size})", param="logit_bias")
    # Choices of one request must differ when sampling: each gets its own seed after the first.
    seed = None if req.seed is None else req.seed + choice
    try:
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              top_k=req.top_k, seed=seed, stop=req.stop_strings, ignore_eos=req.ignore_eos,
                              logprobs=req.num_top_logprobs, structured=req.structured,
                              presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                              repetition_penalty=req.repetition_penalty, min_p=req.min_p, logit_bias=req.logit_biases)
    except ValueError as e:
        raise bad_request(str(e))


def make_job(served: ServedModel, req, prompts: list[list[int]], prefix: str, param: str, chat: bool) -> Job:
    arrival = time.perf_counter()
    job_id = P.new_id(prefix)
    requests = []
    for i, prompt in enumerate(prompts):
        for j in range(req.n):
            sampling = sampling_params(served, req, len(prompt), j, param)
            requests.append(GenerationRequest(tuple(prompt), sampling, req.priority, request_id=f"{job_id}-{i}-{j}"))
    t0 = time.perf_counter()
    plan = served.planner.plan([r.prompt_token_ids for r in requests], requests[0].sampling, chat)
    return Job(job_id, served, prompts, requests, req.num_top_logprobs, req.stop_strings, req.ignore_eos,
               arrival, plan, time.perf_counter() - t0)


async def submit(engine_loop: EngineLoop, job: Job) -> RequestStream:
    try:
        return await engine_loop.submit(job.requests)
    except (PromptTooLongError, KVCacheTooSmallError) as e:
        raise context_length_exceeded(str(e), "max_tokens")
    except EngineFailure as e:
        raise APIError(503, str(e), type="server_error", code="engine_unavailable")
    except ValueError as e:
        raise bad_request(str(e))


# --- outputs -------------------------------------------------------------------------------------


class Choice:
    """One choice's text as it streams: text that may be the start of a stop string is held back
    until it is known not to be one, so the streamed text always equals the final text. A token's logprobs
    go out with the text it starts in: those of tokens a stop string cut off never do."""

    def __init__(self, index: int, stops: tuple[str, ...], unlisted: frozenset[int] = frozenset()):
        """unlisted: token ids without a logprobs entry (the EOS that ends a choice is not part of its content)."""
        self.index = index
        self.stops = stops
        self.unlisted = unlisted
        self.received = ""  # every delta the engine sent
        self.emitted = ""
        self.times: list[float] = []
        self.logprobs: list[tuple[int, TokenLogprobs]] = []  # (where the token's text starts, its logprobs): sent
        self._held_logprobs: list[tuple[int, TokenLogprobs]] = []
        self.result: GenerationResult | None = None

    @property
    def finish_reason(self) -> str | None:
        return self.result.finish_reason if self.result else None

    def push(self, out: TokenOutput) -> tuple[str, list[tuple[int, TokenLogprobs]]]:
        """Text that can be sent now, and the logprobs of the tokens whose text starts in what is sent so far."""
        if out.token_id >= 0:
            self.times.append(out.time)
        if out.logprobs is not None and out.token_id not in self.unlisted:
            self._held_logprobs.append((len(self.received), out.logprobs))
        if out.result is not None:
            self.result = out.result
            new = out.result.text[len(self.emitted):] if out.result.text.startswith(self.emitted) else ""
            self.emitted = out.result.text
            # a stop string cut the text where the final text is shorter than what the engine sent
            cut_at = len(self.emitted) if len(self.emitted) < len(self.received + out.text) else math.inf
            released = [(start, lp) for start, lp in self._held_logprobs if start < cut_at]
            self._held_logprobs = []
        else:
            self.received += out.text
            ready = len(self.received) - self._held_back()
            new = self.received[len(self.emitted):ready]
            self.emitted += new
            cut = sum(start < len(self.emitted) for start, _ in self._held_logprobs)
            released, self._held_logprobs = self._held_logprobs[:cut], self._held_logprobs[cut:]
        self.logprobs += released
        return new, released

    def _held_back(self) -> int:
        """Length of the longest tail of the received text that could begin a stop string."""
        text = self.received
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest


def _choices(job: Job) -> list[Choice]:
    unlisted = frozenset() if job.ignore_eos else job.served.tokenizer.eos_token_ids
    return [Choice(i, job.stops, unlisted) for i in range(len(job.requests))]


def _token_text(job: Job, token_id: int) -> str:
    return job.served.tokenizer.decode([token_id], skip_special_tokens=False)


def _chat_logprob(job: Job, lp: TokenLogprobs) -> P.TokenLogprob:
    def top(token_id: int, logprob: float) -> P.TopLogprob:
        # the token's own bytes: its text shows a part of a multi-byte character as U+FFFD
        return P.TopLogprob(token=_token_text(job, token_id), logprob=logprob,
                            bytes=list(job.served.tokenizer.token_bytes(token_id)))
    chosen = top(lp.token_id, lp.logprob)
    return P.TokenLogprob(**chosen.model_dump(), top_logprobs=[top(t, v) for t, v in lp.top])


def _completion_logprobs(job: Job, entries: list[tuple[int, TokenLogprobs]]) -> P.CompletionLogprobs:
    """entries: (where the token's text starts in the choice's text, its logprobs)."""
    tops = [{_token_text(job, t): v for t, v in lp.top} for _, lp in entries] if job.num_top_logprobs else None
    return P.CompletionLogprobs(tokens=[_token_text(job, lp.token_id) for _, lp in entries],
                                token_logprobs=[lp.logprob for _, lp in entries], top_logprobs=tops,
                                text_offset=[start for start, _ in entries])


def _with_starts(job: Job, entries) -> list[tuple[int, TokenLogprobs]]:
    """A finished token sequence's logprobs with where each token's text starts (its prefix's decoded length)."""
    ids = [lp.token_id for lp in entries]
    return [(len(job.served.tokenizer.decode(ids[:k], skip_special_tokens=False)), lp) for k, lp in enumerate(entries)]


def _usage(job: Job, choices: list[Choice]) -> P.Usage:
    """Each prompt counts once (OpenAI's n > 1), its cached tokens too: those all of its choices found cached."""
    prompt = sum(len(p) for p in job.prompts)
    completion = sum(len(c.result.output_token_ids) if c.result else len(c.times) for c in choices)
    n = len(choices) // len(job.prompts)
    cached = sum(min(c.result.num_cached_prompt_tokens if c.result else 0 for c in choices[i * n:(i + 1) * n])
                 for i in range(len(job.prompts)))
    return P.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details={"cached_tokens": cached})


def _observe(metrics: Metrics, job: Job, choices: list[Choice]) -> None:
    metrics.observe_request(sum(len(p) for p in job.prompts), job.arrival,
                            [(c.times, c.finish_reason or "cancelled") for c in choices], job.planning_seconds)
    job.served.planner.record(job.plan, [c.result for c in choices if c.result is not None])


async def _watch_disconnect(request: Request, on_disconnect: Callable[[], None]) -> None:
    """Calls on_disconnect when the client goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class _Watched:
    """Runs the disconnect watcher for as long as a response is being produced: a client that goes away takes
    its requests out of the engine at once."""

    def __init__(self, request: Request, engine_loop: EngineLoop, stream: RequestStream):
        self.request, self.engine_loop, self.stream = request, engine_loop, stream
        self.task: asyncio.Task | None = None

    def _disconnected(self) -> None:
        self.engine_loop.cancel(self.stream)
        self.stream.close()

    def __enter__(self):
        self.task = asyncio.create_task(_watch_disconnect(self.request, self._disconnected))
        return self

    def __exit__(self, *exc):
        self.task.cancel()
        if not self.stream.finished:
            self.engine_loop.cancel(self.stream)


async def complete(engine_loop: EngineLoop, metrics: Metrics, request: Request, job: Job, chat: bool):
    """The whole response at once."""
    stream = await submit(engine_loop, job)
    choices = _choices(job)
    try:
        with _Watched(request, engine_loop, stream):
            async for out in stream:
                choices[out.index].push(out)
    except EngineFailure as e:
        raise APIError(503, str(e), type="server_error", code="engine_unavailable")
    finally:
        _observe(metrics, job, choices)
    if stream.disconnected:
        return None
    created = P.now()
    if chat:
        return P.ChatCompletion(
            id=job.id, created=created, model=job.served.name, usage=_usage(job, choices),
            choices=[P.ChatChoice(index=c.index, message=P.AssistantMessage(content=c.emitted),
                                  finish_reason=c.finish_reason,
                                  logprobs=(P.ChoiceLogprobs(content=[_chat_logprob(job, lp) for _, lp in c.logprobs])
                                            if job.num_top_logprobs is not None else None))
                     for c in choices])
    return P.Completion(
        id=job.id, created=created, model=job.served.name, usage=_usage(job, choices),
        choices=[P.CompletionChoice(index=c.index, text=c.emitted, finish_reason=c.finish_reason,
                                    logprobs=(_completion_logprobs(job, c.logprobs)
                                              if job.num_top_logprobs is not None else None))
                 for c in choices])


async def complete_beams(engine_loop: EngineLoop, metrics: Metrics, request: Request, job: Job, req, chat: bool):
    """use_beam_search: the n best beams of each prompt (runtime/beam_search.py), searched off the event loop
    through the shared engine's blocking run; choices are prompt-major, best beam first. A client that goes away
    stops the search at its next step."""
    served, first = job.served, job.requests[0]
    gone = threading.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, gone.set))
    try:
        found = await asyncio.to_thread(beam_search, engine_loop.run, [tuple(p) for p in job.prompts], req.beam_width,
                                        first.sampling.max_tokens, served.tokenizer.eos_token_ids, req.length_penalty,
                                        first.priority, gone.is_set)
    except EngineFailure as e:
        raise APIError(503, str(e), type="server_error", code="engine_unavailable")
    except (PromptTooLongError, KVCacheTooSmallError) as e:
        raise context_length_exceeded(str(e), "max_tokens")
    finally:
        watcher.cancel()
    if gone.is_set():
        return None
    beams = [(i * req.n + j, b) for i, found_i in enumerate(found) for j, b in enumerate(found_i[:req.n])]
    usage = P.Usage(prompt_tokens=sum(len(p) for p in job.prompts),
                    completion_tokens=sum(len(b.tokens) for _, b in beams),
                    total_tokens=sum(len(p) for p in job.prompts) + sum(len(b.tokens) for _, b in beams))
    done = time.perf_counter()  # a beam's tokens are known only at the end: its times are the search's end
    metrics.observe_request(usage.prompt_tokens, job.arrival,
                            [([done] * len(b.tokens), "stop" if b.finished else "length") for _, b in beams],
                            job.planning_seconds)
    asked = job.num_top_logprobs is not None
    reason = {True: "stop", False: "length"}
    if chat:
        return P.ChatCompletion(
            id=job.id, created=P.now(), model=served.name, usage=usage,
            choices=[P.ChatChoice(index=k, message=P.AssistantMessage(content=text_of(b, served.tokenizer)),
                                  finish_reason=reason[b.finished],
                                  logprobs=P.ChoiceLogprobs(content=[_chat_logprob(job, lp) for lp in b.logprobs])
                                  if asked else None) for k, b in beams])
    return P.Completion(
        id=job.id, created=P.now(), model=served.name, usage=usage,
        choices=[P.CompletionChoice(index=k, text=text_of(b, served.tokenizer), finish_reason=reason[b.finished],
                                    logprobs=_completion_logprobs(job, _with_starts(job, b.logprobs)) if asked else None)
                 for k, b in beams])


def _sse(payload) -> str:
    body = payload.model_dump_json(exclude_none=True) if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {body}\n\n"


async def stream_events(engine_loop: EngineLoop, metrics: Metrics, request: Request, job: Job, chat: bool,
                        include_usage: bool) -> AsyncIterator[str]:
    """Submit first (so a bad request still gets a 4xx), then the SSE body as an async iterator."""
    stream = await submit(engine_loop, job)
    return _sse_body(engine_loop, metrics, request, job, chat, include_usage, stream)


async def _sse_body(engine_loop, metrics, request, job: Job, chat: bool, include_usage: bool,
                    stream: RequestStream) -> AsyncIterator[str]:
    choices = _choices(job)
    created, name = P.now(), job.served.name
    with _Watched(request, engine_loop, stream):
        if chat:
            yield _sse(P.ChatCompletionChunk(id=job.id, created=created, model=name, choices=[
                P.ChatChunkChoice(index=c.index, delta=P.ChatDelta(role="assistant", content="")) for c in choices]))
        try:
            async for out in stream:
                choice = choices[out.index]
                text, released = choice.push(out)
                if not text and not released and out.finish_reason is None:
                    continue
                if chat:
                    logprobs = P.ChoiceLogprobs(content=[_chat_logprob(job, lp) for _, lp in released]) if released else None
                    chunk = P.ChatCompletionChunk(id=job.id, created=created, model=name, choices=[
                        P.ChatChunkChoice(index=out.index, delta=P.ChatDelta(content=text or None), logprobs=logprobs,
                                          finish_reason=out.finish_reason)])
                else:
                    logprobs = _completion_logprobs(job, released) if released else None
                    chunk = P.Completion(id=job.id, created=created, model=name, choices=[
                        P.CompletionChoice(index=out.index, text=text, logprobs=logprobs,
                                           finish_reason=out.finish_reason)])
                yield _sse(chunk)
        except EngineFailure as e:
            yield _sse(APIError(503, str(e), type="server_error").body())
        finally:
            _observe(metrics, job, choices)
        if stream.disconnected:
            return
        if include_usage:
            usage = _usage(job, choices)
            cls = P.ChatCompletionChunk if chat else P.Completion
            yield _sse(cls(id=job.id, created=created, model=name, choices=[], usage=usage))
        yield "data: [DONE]\n\n"
