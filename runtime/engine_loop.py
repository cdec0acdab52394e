"""An engine driven by its own thread, fed by many callers: the server's HTTP requests, /v1/sql, a replica actor.

The engine is single-threaded by design, so exactly one thread touches it. The
asyncio side never calls the engine: it puts commands (submit, cancel) on a queue
and reads tokens from a per-request asyncio.Queue. After every engine step the
thread hands that step's tokens to the event loop in one `call_soon_threadsafe`,
so 64 streaming requests cost the loop one wake-up per step, not 64.

    stream = await engine_loop.submit([request])
    async for out in stream:        # TokenOutput, until every choice has finished
        ...
    engine_loop.cancel(stream)      # a client went away: its KV blocks are freed

    results = engine_loop.run(requests)   # from another thread (/v1/sql): blocks until all finished
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from runtime.engine import Engine, EngineLoad, EngineStats, RequestHandle
from operators.requests import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult, TokenLogprobs
from runtime.sequence import TokenEvent

log = logging.getLogger("sqlm.server")
Progress = Callable[[int, int, int], None]  # (requests done, requests total, tokens generated so far)

_IDLE_POLL_SECONDS = 0.5  # how often an idle engine thread looks at the stop flag


@dataclass(frozen=True)
class TokenOutput:
    """One generated token of one choice, as the HTTP side sees it."""

    index: int  # the choice within its HTTP request
    token_id: int
    text: str  # newly complete text
    finish_reason: str | None
    time: float  # time.perf_counter() when the engine produced it
    logprobs: TokenLogprobs | None = None  # when the request's SamplingParams.logprobs asked
    result: GenerationResult | None = None  # on a choice's last output: the final text and tokens


@dataclass(frozen=True)
class EngineSnapshot:
    """What the metrics endpoint reads; written by the engine thread after each step."""

    load: EngineLoad
    stats: EngineStats
    num_step_failures: int


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

    async def next_batch(self) -> list[TokenOutput]:
        """The next output and every one already queued behind it ([] once finished): a reader in another
        process takes an engine step's tokens in one hop."""
        batch = []
        try:
            batch.append(await self.__anext__())
            while not self.finished and not self.queue.empty():
                batch.append(await self.__anext__())
        except StopAsyncIteration:
            pass
        return batch

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

    __slots__ = ("index", "stream", "handle")

    def __init__(self, index: int, stream: RequestStream):
        self.index, self.stream = index, stream
        self.handle: RequestHandle | None = None


class _Run:
    """Requests a blocking caller waits on as a whole (engine_loop.run)."""

    def __init__(self, handles: list[RequestHandle], on_progress: Progress | None, done: concurrent.futures.Future):
        self.handles, self.on_progress, self.done = handles, on_progress, done
        self.num_finished = 0

    def check(self) -> bool:
        """Report progress; True once every request has finished (the caller then has its results)."""
        finished = sum(h.finished for h in self.handles)
        if self.on_progress is not None and finished != self.num_finished:
            tokens = sum(len(h.output_token_ids) for h in self.handles)
            try:
                self.on_progress(finished, len(self.handles), tokens)
            except Exception:  # a caller's progress display must not stop the engine thread
                log.exception("a progress callback failed; no more progress for this run")
                self.on_progress = None
        self.num_finished = finished
        if finished < len(self.handles):
            return False
        self.done.set_result([h.result() for h in self.handles])
        return True


class EngineLoop:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._live: dict[str, _Live] = {}
        self._runs: list[_Run] = []
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
        if self.engine.tiers is not None:  # prompt blocks on their way to the disk tier land first
            self.engine.tiers.flush()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def submit(self, requests: list[GenerationRequest]) -> RequestStream:
        """Queue the requests (one per choice) for the engine; raises what engine.submit raises."""
        if not self.alive:
            raise EngineFailure("the engine thread is not running")
        stream = RequestStream([r.request_id for r in requests])
        accepted = asyncio.get_running_loop().create_future()
        self._commands.put(("submit", requests, stream, accepted))
        await accepted
        return stream

    def run(self, requests: list[GenerationRequest | ScoreRequest],
            on_progress: Progress | None = None) -> list[GenerationResult | ScoreResult]:
        """For a thread that is not the event loop's (the /v1/sql worker): the requests join the shared
        batch and this blocks until all have finished; results in request order (runtime.llm_ops.SharedEngine)."""
        if not self.alive:
            raise EngineFailure("the engine thread is not running")
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("run", requests, on_progress, done))
        return done.result()

    def cancel(self, stream: RequestStream) -> None:
        """Stop every unfinished choice of the stream and free its KV blocks (no more outputs come)."""
        self._commands.put(("cancel", stream.request_ids))

    def call(self, fn) -> concurrent.futures.Future:
        """fn(engine) on the engine thread, between steps (the engine is single-threaded); its result or error in
        the future. Commands run in order: a call made before a submit runs before that request is scheduled."""
        if not self.alive:
            raise EngineFailure("the engine thread is not running")
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("call", fn, done))
        return done

    async def snapshots(self) -> list[tuple[str, int | None, EngineSnapshot | None]]:
        """(replica, pid, snapshot) of each engine behind this loop: here one, in this process
        (runtime.replica_loop.ReplicaLoop has one per replica)."""
        return [("0", os.getpid(), self.snapshot)]

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

    def _do_submit(self, requests, stream: RequestStream, accepted: asyncio.Future) -> None:
        submitted: list[str] = []
        try:
            for index, request in enumerate(requests):
                live = _Live(index, stream)
                live.handle = self.engine.submit(request, on_token=lambda event, live=live: self._on_token(live, event))
                submitted.append(request.request_id)
                self._live[request.request_id] = live
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

    def _do_run(self, requests, on_progress: Progress | None, done: concurrent.futures.Future) -> None:
        handles: list[RequestHandle] = []
        try:
            for request in requests:
                handles.append(self.engine.submit(request))
        except Exception as e:
            for handle in handles:  # all or nothing, as engine.generate does
                self.engine.cancel(handle.request_id)
            done.set_exception(e)
            return
        run = _Run(handles, on_progress, done)
        if not run.check():  # with nothing to generate it is finished already
            self._runs.append(run)

    def _do_call(self, fn, done: concurrent.futures.Future) -> None:
        try:
            done.set_result(fn(self.engine))
        except Exception as e:
            done.set_exception(e)

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
        self._runs = [run for run in self._runs if not run.check()]

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
            result = None
            if event.finish_reason is not None:
                result = live.handle.result()
                self._live.pop(event.request_id, None)
            batch.append((live.stream, TokenOutput(live.index, event.token_id, event.text, event.finish_reason,
                                                   now, event.logprobs, result)))
        self._step_events = []
        self._to_loop(_put_all, batch)

    def _fail_live(self, error: BaseException) -> None:
        """End every request in the engine; their streams and blocking callers raise `error`."""
        streams = {id(live.stream): live.stream for live in self._live.values()}
        request_ids = list(self._live) + [h.request_id for run in self._runs for h in run.handles if not h.finished]
        for request_id in request_ids:
            try:
                self.engine.cancel(request_id)
            except Exception:
                log.exception("cancelling %s failed", request_id)
        self._live.clear()
        for run in self._runs:
            run.done.set_exception(error)
        self._runs = []
        self._to_loop(_put_all, [(stream, error) for stream in streams.values()])

    def _refuse_pending(self, error: BaseException) -> None:
        """Submissions not yet taken get `error`, so no caller waits forever."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is not None and command[0] == "submit":
                self._to_loop(_resolve, command[-1], error)
            elif command is not None and command[0] in ("run", "call"):
                command[-1].set_exception(error)

    def _to_loop(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the event loop is closed: nobody is listening any more

    def _take_snapshot(self) -> EngineSnapshot:
        return EngineSnapshot(self.engine.load, self.engine.stats, self.num_step_failures)


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
