"""EngineLoop's interface over N engine replicas (Ray actors, runtime/replicas.py): what `sqlm serve --replicas N`
serves from.

With `prefill_replicas` (`--disaggregate`), prompts and decoding run on different replicas (DistServe, Splitwise,
vLLM's P/D): the decode replica is picked as above; unless most of the prompt is cached there already, a prefill
replica (cache-aware among them) computes the prompt and its KV blocks go through Ray's object store straight to
the decode replica, which adopts them into its prefix cache and runs the request, computing only the prompt's last
partial block. As in vLLM's P/D proxy, the client's tokens all come from the decode replica, so the output is the
one a colocated replica gives. A prefill replica that dies costs only the handoff: the decode replica computes the
prompt itself.

A streamed request goes to the replica the cache-aware router picks (runtime/routing.py) and its tokens come back
an engine step at a time through Ray's streaming generator. When that replica dies mid-request, the request runs
again on another live replica and the tokens the client already has are skipped: the rerun makes the same tokens,
as greedy decoding is deterministic and every sampled request carries a seed (one is drawn here when the client gave
none). Ray restarts the dead actor; the router sends it work again once it answers, with an empty cache. Blocking
callers (/v1/sql, beam search) split their requests over the replicas as SQL's replicas do (`ReplicaSet.run`).

    loop = ReplicaLoop(ReplicaSet(spec, 2), block_size=16, capacity_blocks=4096)
    loop.start(asyncio.get_running_loop())
    stream = await loop.submit(requests)     # a RequestStream, as EngineLoop.submit returns
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import replace

from operators.requests import GenerationRequest
from runtime.engine_loop import EngineFailure, EngineSnapshot, Progress, RequestStream
from runtime.replicas import ACCEPTED, Request, ReplicaSet, Result
from runtime.routing import CacheAwareRouter

log = logging.getLogger("sqlm.server")

RESTART_WAIT_SECONDS = 300  # how long a lost replica is waited for before it counts as gone for good
SNAPSHOT_SECONDS = 2.0  # a replica that does not answer /metrics in this long is shown as down


def prefill_share(replicas: int) -> int:
    """How many of `replicas` prefill by default when disaggregated: a quarter, at least one. W3's prompts are short
    and mostly cached, so prompts are about a quarter of the work (docs/SCALING.md's simulation: at 30 req/s over 8
    replicas a 2 + 6 split meets the SLO where 4 + 4 does not)."""
    return max(1, replicas // 4)


def _seeded(request: GenerationRequest) -> GenerationRequest:
    """A sampled request without a seed gets one, so a rerun on another replica samples the same tokens."""
    s = request.sampling
    if not s.greedy and s.seed is None:
        return replace(request, sampling=replace(s, seed=random.getrandbits(63)))
    return request


class ReplicaLoop:
    def __init__(self, replicas: ReplicaSet, block_size: int, capacity_blocks: int, prefill_replicas: int = 0):
        """prefill_replicas > 0 (fewer than the replicas): prefill/decode disaggregation, the first prefill_replicas
        compute prompts and hand their KV to the others, which decode."""
        self.replicas = replicas
        self.router = CacheAwareRouter(len(replicas), block_size, capacity_blocks)
        self.prefillers = tuple(range(prefill_replicas))
        self.decoders = tuple(range(prefill_replicas, len(replicas)))
        self.routes: collections.Counter[tuple[int, str]] = collections.Counter()  # (replica, reason) -> requests
        self.failures = [0] * len(replicas)  # requests lost to each replica's death (and run again elsewhere)
        self._serving: dict[int, tuple[asyncio.Task, list[int]]] = {}  # id(stream) -> (its task, [its replica])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._watchers: set[asyncio.Task] = set()  # waiting for a lost replica to come back

    # --- EngineLoop's interface ---------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        for task, _ in list(self._serving.values()):
            task.cancel()
        self.replicas.close()

    @property
    def alive(self) -> bool:
        return self._loop is not None and not self._stopped and any(self.router.up)

    async def submit(self, requests: list[GenerationRequest]) -> RequestStream:
        """Route the requests (one HTTP request's choices, which share a prompt) to one replica; raises what the
        replica's engine.submit raised."""
        if not self.alive:
            raise EngineFailure("no engine replica is running")
        requests = [_seeded(r) for r in requests]
        stream = RequestStream([r.request_id for r in requests])
        accepted = asyncio.get_running_loop().create_future()
        where = [-1]
        task = asyncio.create_task(self._serve(requests, stream, accepted, where))
        self._serving[id(stream)] = (task, where)
        task.add_done_callback(lambda _: self._serving.pop(id(stream), None))
        await accepted
        return stream

    def run(self, requests: list[Request], on_progress: Progress | None = None) -> list[Result]:
        """For a thread that is not the event loop's: the requests split over the replicas; results in request
        order (runtime.llm_ops.SharedEngine)."""
        if not self.alive:
            raise EngineFailure("no engine replica is running")

        def learned(k: int, part: list[Request]) -> None:  # the router's state belongs to the event loop
            self._loop.call_soon_threadsafe(lambda: [self.router.remember(k, r.prompt_token_ids) for r in part])
        return self.replicas.run(requests, learned, on_progress).results

    def cancel(self, stream: RequestStream) -> None:
        """Stop every unfinished choice of the stream on its replica (no more outputs come)."""
        serving = self._serving.pop(id(stream), None)
        if serving is None:
            return
        task, where = serving
        if where[0] >= 0:
            self.replicas.cancel(where[0], stream.request_ids)
        task.cancel()

    async def snapshots(self) -> list[tuple[str, int | None, EngineSnapshot | None]]:
        """(replica, pid, snapshot) of each replica; (replica, None, None) for one that is down or does not answer."""
        async def one(k: int):
            if not self.router.up[k]:
                return str(k), None, None
            try:
                pid, snap = await asyncio.wait_for(self.replicas.actors[k].snapshot.remote(), SNAPSHOT_SECONDS)
                return str(k), pid, snap
            except Exception:
                return str(k), None, None
        return list(await asyncio.gather(*(one(k) for k in range(len(self.replicas)))))

    # --- one streamed request ------------------------------------------------------------------------

    async def _serve(self, requests: list[GenerationRequest], stream: RequestStream, accepted: asyncio.Future,
                     where: list[int]) -> None:
        from ray.exceptions import RayActorError

        prompt = requests[0].prompt_token_ids
        delivered = [0] * len(requests)  # outputs of each choice the client has
        failed: set[int] = set()
        reruns = 0
        kv = None  # with disaggregation: the prefill replica's KV blocks of the prompt (kept for a rerun)
        while True:
            route = self.router.route(prompt, frozenset(failed), self.decoders)
            k = where[0] = route.replica
            self.routes[k, route.reason] += 1
            self.router.started(k, prompt)
            if self.prefillers and kv is None and route.reason != "cache":  # cached there already: no handoff
                kv = self._prefill(requests)
            skip = list(delivered)  # a rerun makes the same outputs again: the client has these already
            try:
                async for ref in self.replicas.stream(k, requests, kv):
                    item = await ref
                    if item == ACCEPTED:
                        _settle(accepted, None)
                    elif isinstance(item, BaseException):
                        if not _settle(accepted, item):  # refused: nothing runs
                            stream.queue.put_nowait(item)
                        return
                    else:
                        for out in item:
                            if skip[out.index]:
                                skip[out.index] -= 1
                                continue
                            delivered[out.index] += 1
                            stream.queue.put_nowait(out)
                return
            except RayActorError as e:
                self._lost(k, e)
                failed.add(k)
                reruns += 1
                if reruns >= len(self.replicas):  # a request that kills every replica it meets runs no more
                    error = EngineFailure(f"the engine replicas running this request died {reruns} times: {e}")
                    if not _settle(accepted, error):
                        stream.queue.put_nowait(error)
                    return
            finally:
                self.router.finished(k)

    def _prefill(self, requests: list[GenerationRequest]):
        """Start computing the prompt on a prefill replica (cache-aware among them); returns the ref to its KV
        blocks, which the decode replica awaits and adopts (directly from the object store, not through here)."""
        prompt = requests[0].prompt_token_ids
        route = self.router.route(prompt, among=self.prefillers)
        p = route.replica
        self.routes[p, route.reason] += 1
        self.router.started(p, prompt)
        outcome, blocks = self.replicas.prefill(p, requests)
        self._watchers.add(task := asyncio.create_task(self._prefill_done(p, outcome)))
        task.add_done_callback(self._watchers.discard)
        return blocks

    async def _prefill_done(self, p: int, outcome) -> None:
        """The prefill replica's small outcome (never the KV itself): a death there is noticed here; the decode
        replica then computes the prompt itself."""
        from ray.exceptions import RayActorError

        try:
            await outcome
        except RayActorError as e:
            self._lost(p, e)
        finally:
            self.router.finished(p)

    def role(self, k: int) -> str:
        return "prefill" if k in self.prefillers else "decode" if self.prefillers else "both"

    def _lost(self, k: int, error: Exception) -> None:
        self.failures[k] += 1
        if not self.router.up[k]:
            return
        log.warning("engine replica %d died (%s): its requests run again on another replica", k, type(error).__name__)
        self.router.lost(k)
        self._watchers.add(task := asyncio.create_task(self._await_restart(k)))  # held: the loop keeps weak refs
        task.add_done_callback(self._watchers.discard)

    async def _await_restart(self, k: int) -> None:
        """Ray restarts the actor (a new process loads the model); route to it again once it answers."""
        deadline = self._loop.time() + RESTART_WAIT_SECONDS
        while not self._stopped and self._loop.time() < deadline:
            try:
                await self.replicas.actors[k].snapshot.remote()
                if (sent := self.replicas.send_predictor(k)) is not None:
                    await sent
                self.router.restored(k)
                log.info("engine replica %d is back", k)
                return
            except Exception as e:
                log.debug("engine replica %d is not back yet: %s", k, e)
                await asyncio.sleep(1.0)
        log.error("engine replica %d did not come back", k)


def _settle(future: asyncio.Future, error: BaseException | None) -> bool:
    """Resolve the submit future once; False if it was resolved already."""
    if future.done():
        return False
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
    return True
