"""The one shared engine, driven by its own thread, fed by many HTTP requests.

The engine is single-threaded by design, so exactly one thread touches it. The
asyncio side never calls the engine: it puts commands (submit, cancel) on a queue
and reads tokens from a per-request asyncio.Queue. After every engine step the
thread hands that step's tokens to the event loop in one `call_soon_threadsafe`,
so 64 streaming requests cost the loop one wake-up per step, not 64.

    stream = await engine_loop.submit([request], num_top_logprobs=None)
    async for out in stream:        # TokenOutput, until every choice has finished
        ...
    engine_loop.cancel(stream)      # a client went away: its KV blocks are freed
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

from runtime.engine import Engine, EngineStats, RequestHandle
from runtime.requests import GenerationRequest, GenerationResult
from runtime.sequence import TokenEvent
from sqlm.server.logprobs import LogprobTracker, TokenLogprobs

log = logging.getLogger("sqlm.server")

_IDLE_POLL_SECONDS = 0.5  # how often an idle engine thread looks at the stop flag


@dataclass(frozen=True)
class TokenOutput:
    """One generated token of one choice, as the HTTP side sees it."""

    index: int  # the choice within its HTTP request
    token_id: int
    text: str  # newly complete text
    finish_reason: str | None
    time: float  # time.perf_counter() when the engine produced it
    logprobs: TokenLogprobs | None = None
    result: GenerationResult | None = None  # on a choice's last output: the final text and tokens


@dataclass(frozen=True)
class EngineSnapshot:
    """What the metrics endpoint reads; written by the engine thread after each step."""

    num_running: int
    num_waiting: int
    kv_blocks_used: int  # held by sequences or by the prefix cache
    kv_blocks_cached: int  # held only by the prefix cache (evictable on demand)
    kv_blocks_total: int
    num_step_failures: int
    stats: EngineStats

    @property
    def kv_blocks_active(self) -> int:
        """Blocks that running or waiting requests hold."""
        return self.kv_blocks_used - self.kv_blocks_cached


class EngineFailure(RuntimeError):
    """The engine raised while running a step; the requests in it could not finish."""


_CLOSED = object()  # put on a stream's queue when its client went away


class RequestStream:
    """The tokens of one HTTP request's choices, in the order the engine made them."""

    def __init__(self, request_ids: list[str]):
        self.request_ids = request_ids
        self.queue: asyncio.Queue = asyncio.Queue()  # TokenOutput | BaseException | _CLOSED
        self.num_unfinished = len(request_ids)
        self.disconnected = False

    def close(self) -> None:
        """The client is gone: iteration ends now (call EngineLoop.cancel too, to free the engine's work)."""
        self.queue.put_nowait(_CLOSED)

    @property
    def finished(self) -> bool:
        return self.num_unfinished == 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> TokenOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is _CLOSED:
            self.disconnected, self.num_unfinished = True, 0
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.num_unfinished = 0
            raise item
        if item.finish_reason is not None:
            self.num_unfinished -= 1
        return item


class _Live:
    """A submitted request as the engine thread keeps it."""

    __slots__ = ("index", "stream", "handle", "tracker")

    def __init__(self, index: int, stream: RequestStream):
        self.index, self.stream = index, stream
        self.handle: RequestHandle | None = None
        self.tracker: LogprobTracker | None = None


class EngineLoop:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._live: dict[str, _Live] = {}
        self._step_events: list[tuple[_Live, TokenEvent]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlm-engine", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.num_step_failures = 0
        self.snapshot = self._take_snapshot()

    # --- the asyncio side -----------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._commands.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def submit(self, requests: list[GenerationRequest], num_top_logprobs: int | None = None) -> RequestStream:
        """Queue the requests (one per choice) for the engine; raises what engine.submit raises."""
        if not self.alive:
            raise EngineFailure("the engine thread is not running")
        stream = RequestStream([r.request_id for r in requests])
        accepted = asyncio.get_running_loop().create_future()
        self._commands.put(("submit", requests, stream, num_top_logprobs, accepted))
        await accepted
        return stream

    def cancel(self, stream: RequestStream) -> None:
        """Stop every unfinished choice of the stream and free its KV blocks (no more outputs come)."""
        self._commands.put(("cancel", stream.request_ids))

    # --- the engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take_commands(block=not self.engine.has_unfinished)
            if self.engine.has_unfinished:
                self._step()
            self.snapshot = self._take_snapshot()
        shutdown = EngineFailure("the server is shutting down")
        self._fail_live(shutdown)
        self._refuse_pending(shutdown)

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=_IDLE_POLL_SECONDS) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while command is not None:
            kind, *args = command
            getattr(self, f"_do_{kind}")(*args)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _do_submit(self, requests, stream: RequestStream, num_top_logprobs, accepted: asyncio.Future) -> None:
        submitted: list[str] = []
        try:
            for index, request in enumerate(requests):
                live = _Live(index, stream)
                live.handle = self.engine.submit(request, on_token=lambda event, live=live: self._on_token(live, event))
                submitted.append(request.request_id)
                self._live[request.request_id] = live
                if num_top_logprobs is not None:  # before any token: events come only from step()
                    live.tracker = LogprobTracker(self.engine.model, request.prompt_token_ids, num_top_logprobs)
                if live.handle.finished:  # nothing to generate (the engine finished it at once)
                    self._step_events.append((live, None))
        except Exception as e:
            for request_id in submitted:
                self.engine.cancel(request_id)
                self._live.pop(request_id, None)
            self._step_events = [(live, ev) for live, ev in self._step_events if live.stream is not stream]
            self._to_loop(_resolve, accepted, e)
            return
        self._to_loop(_resolve, accepted, None)
        self._deliver()

    def _on_token(self, live: _Live, event: TokenEvent) -> None:
        self._step_events.append((live, event))

    def _do_cancel(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            if self._live.pop(request_id, None) is not None:
                self.engine.cancel(request_id)

    def _step(self) -> None:
        try:
            self.engine.step()
        except Exception as e:
            # A failed step leaves its sequences in an unknown state: end them all, keep serving the next ones.
            log.exception("engine step failed; cancelling the %d requests in flight", len(self._live))
            self.num_step_failures += 1
            self._step_events.clear()
            self._fail_live(EngineFailure(f"the engine failed while running this request: {type(e).__name__}: {e}"))
            return
        self._deliver()

    def _deliver(self) -> None:
        """Turn this step's token events into outputs and hand them to the event loop in one call."""
        if not self._step_events:
            return
        now = time.perf_counter()
        batch: list[tuple[RequestStream, TokenOutput]] = []
        for live, event in self._step_events:
            if event is None:
                result = live.handle.result()
                batch.append((live.stream, TokenOutput(live.index, -1, "", result.finish_reason, now, None, result)))
                self._live.pop(result.request_id, None)
                continue
            if event.request_id not in self._live:
                continue  # cancelled by its client in this very step
            logprobs = live.tracker.observe(event.token_id) if live.tracker is not None else None
            result = None
            if event.finish_reason is not None:
                result = live.handle.result()
                self._live.pop(event.request_id, None)
            batch.append((live.stream, TokenOutput(live.index, event.token_id, event.text, event.finish_reason,
                                                   now, logprobs, result)))
        self._step_events = []
        self._to_loop(_put_all, batch)

    def _fail_live(self, error: BaseException) -> None:
        """End every request in the engine; their streams raise `error`."""
        streams = {id(live.stream): live.stream for live in self._live.values()}
        for request_id in list(self._live):
            try:
                self.engine.cancel(request_id)
            except Exception:
                log.exception("cancelling %s failed", request_id)
        self._live.clear()
        self._to_loop(_put_all, [(stream, error) for stream in streams.values()])

    def _refuse_pending(self, error: BaseException) -> None:
        """Submissions not yet taken get `error`, so no caller waits forever."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is not None and command[0] == "submit":
                self._to_loop(_resolve, command[4], error)

    def _to_loop(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the event loop is closed: nobody is listening any more

    def _take_snapshot(self) -> EngineSnapshot:
        kv = self.engine.kv
        cached = kv.prefix_cache.num_evictable_blocks if kv.prefix_cache is not None else 0
        return EngineSnapshot(len(self.engine.scheduler.running), len(self.engine.scheduler.waiting),
                              kv.pool.num_used, cached, kv.pool.num_blocks, self.num_step_failures, self.engine.stats)


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _put_all(batch) -> None:
    for stream, item in batch:
        stream.queue.put_nowait(item)
