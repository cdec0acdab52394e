"""Engine replicas as Ray actors: one operator's model calls split over N engines, each in its own process with
its own KV pool, prefix cache and threads (vLLM's data-parallel deployment, Ray Data's batch inference).

`partition` keeps requests that share a prompt prefix on one replica, where its prefix cache computes the prefix
once: the requests are sorted by their prompt tokens (so sharers are neighbours) and cut into N contiguous ranges
of about equal work (prompt plus new tokens). `ReplicaSet` starts the actors on a local Ray (or the cluster
RAY_ADDRESS names), runs each range on its replica and returns the results in request order. A replica that dies
mid-run is restarted by Ray and its range runs again on another live replica, so no request is lost; greedy
outputs do not depend on which replica ran them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from operators.engine_config import EngineConfig
from operators.requests import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult

Request = GenerationRequest | ScoreRequest
Result = GenerationResult | ScoreResult
OBJECT_STORE_BYTES = 128 << 20  # a local Ray's object store: requests and results are small


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
    """One engine in its own process: the class of the Ray actors a ReplicaSet starts."""

    def __init__(self, model_path: str, name: str, knobs: EngineConfig, model_options: dict, threads: int):
        import torch

        from catalog.registry import load_cached
        from codegen.kernel_set import kernel_set
        from runtime.engine import Engine

        torch.set_num_threads(threads)
        loaded = load_cached(model_path, name)
        model = kernel_set("cpu").build_model(loaded, kernels=knobs.kernels, weight_format=knobs.weight_format,
                                              **model_options)
        self.engine = Engine(model, loaded.tokenizer, knobs)

    def generate(self, requests: list[Request]) -> list[Result]:
        return self.engine.generate(requests)

    def pid(self) -> int:
        return os.getpid()


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
    """N EngineReplica actors on one model and one set of knobs."""

    def __init__(self, model_path: str, name: str, knobs: EngineConfig, model_options: dict, replicas: int):
        import ray

        start_ray()
        threads = max(1, (os.cpu_count() or 1) // replicas)
        env = {"SQLM_THREADS": str(threads), "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        # num_cpus=0: the threads above, not Ray's CPU count, share the cores; max_restarts: a dead one comes back
        actor = ray.remote(EngineReplica).options(num_cpus=0, max_restarts=2, max_task_retries=0,
                                                  runtime_env={"env_vars": env})
        self.actors = [actor.remote(model_path, name, knobs, model_options, threads) for _ in range(replicas)]

    def run(self, requests: list[Request]) -> ReplicaRun:
        import ray
        from ray.exceptions import RayActorError

        parts = partition(requests, len(self.actors))
        pending = {k: self.actors[k].generate.remote([requests[i] for i in part]) for k, part in enumerate(parts)}
        results: list[Result | None] = [None] * len(requests)
        rows, pids, retries = [0] * len(self.actors), set(), 0
        for k, part in enumerate(parts):
            owner = k
            while True:
                try:
                    out = ray.get(pending[k])
                    break
                except RayActorError:  # the replica died: another live one runs the range again
                    retries += 1
                    if retries > 2 * len(self.actors):
                        raise
                    owner = (owner + 1) % len(self.actors)
                    pending[k] = self.actors[owner].generate.remote([requests[i] for i in part])
            for i, result in zip(part, out):
                results[i] = result
            rows[owner] += len(part)
            pids.add(ray.get(self.actors[owner].pid.remote()))
        return ReplicaRun(results, rows, sorted(pids), retries)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
