"""Engine replicas as Ray actors, each an engine in its own process with its own KV pool, prefix cache and threads
(vLLM's data-parallel deployment, Ray Data's batch inference, Ray Serve's replicas).

Two callers. SQL: `ReplicaSet.run` splits one operator's model calls over the replicas; `partition` keeps requests
that share a prompt prefix on one replica, where its prefix cache computes the prefix once (the requests are sorted
by their prompt tokens, so sharers are neighbours, and cut into N contiguous ranges of about equal work). The server:
`ReplicaSet.stream` runs one HTTP request's choices on the replica its router picked and yields their tokens an
engine step at a time (sqlm/server/replica_loop.py).

Each replica runs an EngineLoop (runtime/engine_loop.py) in its actor process, so streamed requests and SQL's runs
join one continuous batch there, as they do in a single-engine server. A replica that dies is restarted by Ray
(`max_restarts`); what it was running runs again on a live replica, so no request is lost.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, replace
from typing import Callable

from operators.engine_config import EngineConfig
from operators.requests import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult
from runtime.kv_tiers import KVTierSpec

log = logging.getLogger("sqlm.replicas")
Request = GenerationRequest | ScoreRequest
Result = GenerationResult | ScoreResult
OBJECT_STORE_BYTES = 128 << 20  # a local Ray's object store: requests, tokens and results are small
ACCEPTED = "accepted"  # a replica's first item on a stream: the engine took every request
MAX_RESTARTS = 2


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built from; picklable, so a replica builds the same engine in its own process."""

    model_path: str
    name: str
    knobs: EngineConfig
    model_options: dict  # KernelSet.build_model's options (runtime.llm_ops.model_options)
    draft_path: str | None = None  # the draft model's file, for knobs.speculative = 'draft'
    kv_tiers: KVTierSpec | None = None  # the catalog's host and disk KV tiers
    predictor: Callable[[GenerationRequest], float] | None = None  # expected output tokens, for SPF scheduling


def build_engine(spec: EngineSpec):
    """The model (and draft) loaded and compiled for the knobs, and the engine over them."""
    from catalog.registry import load_cached
    from codegen.kernel_set import kernel_set
    from runtime.engine import Engine

    kernels = kernel_set("cpu")
    loaded = load_cached(spec.model_path, spec.name)
    options = dict(kernels=spec.knobs.kernels, weight_format=spec.knobs.weight_format, **spec.model_options)
    model = kernels.build_model(loaded, **options)
    draft = None if spec.draft_path is None else kernels.build_model(load_cached(spec.draft_path), **options)
    return Engine(model, loaded.tokenizer, spec.knobs, spec.predictor, kernels=kernels, draft_model=draft,
                  kv_tiers=spec.kv_tiers)


def _work(request: Request) -> int:
    """Tokens a request puts through the model: its prompt, and what it generates or scores."""
    extra = request.sampling.max_tokens if isinstance(request, GenerationRequest) else len(request.continuation_token_ids)
    return len(request.prompt_token_ids) + extra


def partition(requests: list[Request], n: int) -> list[list[int]]:
    """Indices of the requests each of n replicas runs: ranges of the prompt-sorted order (shared prefixes stay
    together), cut where each range holds about 1/n of the work. Fewer than n ranges when there are fewer requests.

    >>> from operators.requests import SamplingParams
    >>> r = lambda *ids: GenerationRequest(ids, SamplingParams(max_tokens=2))
    >>> partition([r(9, 1), r(5, 1), r(9, 2), r(5, 2)], 2)
    [[1, 3], [0, 2]]
    """
    order = sorted(range(len(requests)), key=lambda i: requests[i].prompt_token_ids)
    total = sum(_work(r) for r in requests)
    parts: list[list[int]] = [[]]
    done = 0
    for i in order:
        if parts[-1] and len(parts) < n and done >= total * len(parts) / n:
            parts.append([])
        parts[-1].append(i)
        done += _work(requests[i])
    return parts


class EngineReplica:
    """One engine in its own process, driven by an EngineLoop: the class of the Ray actors a ReplicaSet starts."""

    def __init__(self, spec: EngineSpec, threads: int | None):
        """threads: the replica's share of a machine it shares with other replicas (None: a machine of its own)."""
        import torch

        from runtime.engine_loop import EngineLoop

        if threads is not None:
            torch.set_num_threads(threads)
        self.loop = EngineLoop(build_engine(spec))
        self.streams: dict[str, object] = {}  # request id -> its RequestStream, while it streams

    def _started(self):
        if not self.loop.alive:
            self.loop.start(asyncio.get_running_loop())
        return self.loop

    async def run(self, requests: list[Request]) -> list[Result] | Exception:
        """Every request to its end, in the shared batch; results in request order. A refusal or an engine failure
        is returned as the exception object (Ray would wrap a raised one in its own error type)."""
        loop = self._started()
        try:
            return await asyncio.to_thread(loop.run, requests)
        except Exception as e:
            return e

    async def prefill(self, requests: list[GenerationRequest]) -> tuple[int | Exception, list[bytes]]:
        """Prefill/decode disaggregation's first half: the requests' shared prompt computed (one token generated,
        then dropped) and its KV returned as whole blocks for a decode replica to adopt. Called with
        num_returns=2: (blocks or the refusal, the blocks), so the caller learns the outcome without fetching the KV."""
        loop = self._started()
        first = requests[0]
        first = replace(first, sampling=replace(first.sampling, max_tokens=1))
        try:
            await asyncio.to_thread(loop.run, [first])
            blocks = await asyncio.wrap_future(loop.call(lambda engine: engine.export_prefix(first.prompt_token_ids)))
        except Exception as e:  # the decode replica meets the same refusal and reports it
            return e, []
        return len(blocks), blocks

    async def stream(self, requests: list[GenerationRequest], kv: list | None = None):
        """ACCEPTED, then lists of TokenOutput (an engine step's at a time) until every request has finished. A
        refusal (a prompt too long, a bad parameter) or an engine failure comes as the exception object itself.
        kv: [a ref to a prefill replica's KV blocks of the prompt], adopted before the requests are submitted;
        when that replica died or its blocks do not fit, the prompt is computed here."""
        loop = self._started()
        if kv:
            try:
                blocks = await kv[0]
                prompt = requests[0].prompt_token_ids
                await asyncio.wrap_future(loop.call(lambda engine: engine.adopt_prefix(prompt, blocks)))
            except Exception as e:
                log.warning("the prefill replica's KV could not be adopted (%s): computing the prompt here", e)
        try:
            stream = await loop.submit(requests)
        except Exception as e:
            yield e
            return
        yield ACCEPTED
        for request in requests:
            self.streams[request.request_id] = stream
        try:
            while batch := await stream.next_batch():
                yield batch
        except Exception as e:
            yield e
        finally:
            for request in requests:
                self.streams.pop(request.request_id, None)
            if not stream.finished:  # the caller went away: the engine stops working on these
                loop.cancel(stream)

    def cancel(self, request_ids: list[str]) -> None:
        """Stop these requests (a client went away): their KV blocks are freed and their stream ends."""
        for stream in {id(s): s for r in request_ids if (s := self.streams.get(r)) is not None}.values():
            self.loop.cancel(stream)
            stream.close()

    async def set_predictor(self, predictor: Callable[[GenerationRequest], float]) -> None:
        """Expected output tokens of a request, for shortest-predicted-first admission (a copy of what the server
        has learned; sent after start, and again after a restart)."""
        await asyncio.wrap_future(self._started().call(lambda engine: setattr(engine, "predictor", predictor)))

    def snapshot(self):
        """(pid, EngineSnapshot): what /metrics and /health show of this replica."""
        return os.getpid(), self.loop.snapshot

    def stop(self) -> None:
        """The engine thread ends; blocks on their way to the disk tier land first."""
        self.loop.stop()


def start_ray(num_cpus: int | None = None) -> None:
    """A local Ray sized for this machine, unless one runs in this process already or RAY_ADDRESS names a
    cluster to join."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES,
             include_dashboard=False, log_to_driver=False)


@dataclass
class ReplicaRun:
    results: list[Result]
    rows_per_replica: list[int]  # requests each replica ran (a retried range counts where it finished)
    pids: list[int]  # the process of each replica that ran a range
    retries: int  # ranges run again because their replica died


class ReplicaSet:
    """N EngineReplica actors building one EngineSpec."""

    def __init__(self, spec: EngineSpec, replicas: int):
        import ray

        start_ray()
        if os.environ.get("RAY_ADDRESS"):  # a cluster: one replica a machine as far as they go, each on its cores
            threads, options = None, {"scheduling_strategy": "SPREAD"}
        else:  # this machine: the replicas split its cores; num_cpus=0, as these threads, not Ray, share them
            threads = max(1, (os.cpu_count() or 1) // replicas)
            env = {"SQLM_THREADS": str(threads), "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            options = {"runtime_env": {"env_vars": env}}
        # max_restarts: a dead replica comes back (a new process loads the model again)
        actor = ray.remote(EngineReplica).options(num_cpus=0, max_restarts=MAX_RESTARTS, max_task_retries=0, **options)
        # The length predictor (megabytes of examples) goes by a call after start, not with the constructor: an
        # argument that large would live in the object store, where a restart could find it gone (ray#53727).
        self.spec, self.predictor = replace(spec, predictor=None), spec.predictor
        self.actors = [actor.remote(self.spec, threads) for _ in range(replicas)]
        for k in range(replicas):
            self.send_predictor(k)

    def send_predictor(self, replica: int):
        """Give the replica the length predictor (after its start or a restart); returns the call's ref."""
        if self.predictor is not None:
            return self.actors[replica].set_predictor.remote(self.predictor)

    def __len__(self) -> int:
        return len(self.actors)

    def run(self, requests: list[Request], on_part: Callable[[int, list[Request]], None] | None = None,
            on_progress: Callable[[int, int, int], None] | None = None) -> ReplicaRun:
        """The requests split over the replicas (`partition`), results in request order. on_part(replica,
        requests) is told where each range went (the server's router learns what each replica caches);
        on_progress(requests done, total, tokens generated) as each range finishes."""
        import ray
        from ray.exceptions import RayActorError

        parts = partition(requests, len(self.actors))
        pending = {}  # ref -> (range, replica running it)
        for k, part in enumerate(parts):
            pending[self.actors[k].run.remote([requests[i] for i in part])] = (k, k)
            if on_part is not None:
                on_part(k, [requests[i] for i in part])
        results: list[Result | None] = [None] * len(requests)
        rows, pids, retries, done, tokens = [0] * len(self.actors), set(), 0, 0, 0
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            k, owner = pending.pop(ref)
            try:
                out = ray.get(ref)
            except RayActorError:  # the replica died: another live one runs the range again
                retries += 1
                if retries > 2 * len(self.actors):
                    raise
                owner = (owner + 1) % len(self.actors)
                pending[self.actors[owner].run.remote([requests[i] for i in parts[k]])] = (k, owner)
                continue
            if isinstance(out, Exception):
                raise out
            for i, result in zip(parts[k], out):
                results[i] = result
            rows[owner] += len(parts[k])
            pids.add(ray.get(self.actors[owner].snapshot.remote())[0])
            done += len(parts[k])
            tokens += sum(len(r.output_token_ids) for r in out if isinstance(r, GenerationResult))
            if on_progress is not None:
                on_progress(done, len(requests), tokens)
        return ReplicaRun(results, rows, sorted(pids), retries)

    def stream(self, replica: int, requests: list[GenerationRequest], kv=None):
        """A Ray ObjectRefGenerator over EngineReplica.stream's items (iterate it with `async for`); kv: the KV
        blocks' ref from `prefill`, to adopt first."""
        return self.actors[replica].stream.options(num_returns="streaming").remote(
            requests, None if kv is None else [kv])  # in a list: Ray hands the ref over unresolved

    def prefill(self, replica: int, requests: list[GenerationRequest]):
        """(ref to the outcome: blocks or the refusal; ref to the KV blocks) of EngineReplica.prefill."""
        return self.actors[replica].prefill.options(num_returns=2).remote(requests)

    def cancel(self, replica: int, request_ids: list[str]) -> None:
        self.actors[replica].cancel.remote(request_ids)

    def close(self) -> None:
        """Each engine stops (its disk-tier writes land), then the actors go."""
        import ray

        try:
            ray.get([actor.stop.remote() for actor in self.actors], timeout=30)
        except Exception:  # a dead or hung replica has nothing more to write
            pass
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
