"""The LLM engine: continuous batching over a paged KV cache with a radix prefix cache.

    engine = Engine(model, tokenizer, EngineConfig(kv_cache_memory=1 << 30))
    results = engine.generate([GenerationRequest(prompt_ids, SamplingParams(max_tokens=32))])

`step()` is schedule -> run -> postprocess. Requests join and leave the running
batch at every step; results stream token by token through `on_token` callbacks.
"""
from __future__ import annotations

import contextlib

import itertools
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import torch

from operators.llama import LlamaModel
from runtime.batch import ScheduledBatch
from operators.engine_config import EngineConfig
from runtime.errors import check_context
from runtime.kv_blocks import KVCacheManager
from runtime.kv_tiers import KVTierSpec
from runtime.logprobs import token_logprobs
from codegen.kernel_set import KernelSet, kernel_set
from runtime.model_runner import KV_CACHE_DTYPES, ModelRunner, PagedKVCache, StepLogits
from operators.requests import (GenerationRequest, GenerationResult, SamplingParams, ScoreRequest, ScoreResult,
                              TokenLogprobs)
from runtime.sampler import make_generator, sample
from runtime.logits_processors import process
from runtime.structured import Grammars, allowed_tokens
from runtime.scheduler import Scheduler
from runtime.draft_model import DraftModelProposer
from runtime.speculation import PromptLookup, speculable, still_pays, verify
from runtime.sequence import Sequence, SequenceStatus, TokenEvent
from catalog.tokenizer import IncrementalDetokenizer, Tokenizer


# what reconfigure() may change: how steps are scheduled and drafted, not the model, the KV pool or its layout
RECONFIGURABLE = ("max_batch_size", "prefill_chunk_tokens", "scheduling", "speculative", "num_speculative_tokens",
                  "speculative_max_batch", "speculative_min_acceptance", "draft_model", "kv_restore")


# what an int8 KV cache's per-channel key magnitudes are measured on (PagedKVCache.calibrate_keys)
KEY_CALIBRATION_TEXT = (
    "The committee met in the library on Tuesday to discuss the budget for the new park. Some members wanted a "
    "playground near the entrance; others preferred a quiet garden with benches, a pond and fifty trees. Question: "
    "what is 17 times 23? Answer: 391. def add(a, b):\n    return a + b\n# Write a short review of item 42: great "
    "price, good quality, fast delivery. Le chat dort sur le canape. 2026-12-02, 18:00 UTC, $19.99, 3.14159.")


class KVCacheTooSmallError(ValueError):
    """A single request needs more KV memory than the whole pool: it could never run."""


@dataclass(frozen=True)
class EngineStats:
    num_steps: int
    num_batched_tokens: int  # tokens run through the model, recomputation included
    num_prompt_tokens: int  # prompt tokens of admitted requests (first admission)
    num_computed_prompt_tokens: int
    num_cached_prompt_tokens: int  # served from the prefix cache
    num_recomputed_tokens: int  # computed again after a preemption
    num_generated_tokens: int
    num_scored_tokens: int
    num_block_copies: int  # copy-on-write copies of shared blocks
    num_speculative_steps: int  # sequence steps that verified drafts
    num_draft_tokens: int  # speculative tokens verified
    num_accepted_draft_tokens: int  # of those, the ones the target model accepted
    preemptions: int
    peak_blocks: int  # most KV blocks in use at once
    num_blocks: int
    block_size: int
    kv_cache_bytes: int

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.num_cached_prompt_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0


@dataclass(frozen=True)
class EngineLoad:
    """How busy the engine is right now: what a server reports as gauges."""

    num_running: int
    num_waiting: int
    kv_blocks_used: int  # held by sequences or by the prefix cache
    kv_blocks_cached: int  # held only by the prefix cache (evictable on demand)
    kv_blocks_total: int

    @property
    def kv_blocks_active(self) -> int:
        """Blocks that running or waiting requests hold."""
        return self.kv_blocks_used - self.kv_blocks_cached


class RequestHandle:
    def __init__(self, seq: Sequence):
        self._seq = seq

    @property
    def request_id(self) -> str:
        return self._seq.request_id

    @property
    def finished(self) -> bool:
        return self._seq.is_finished

    @property
    def output_token_ids(self) -> list[int]:
        return self._seq.output_token_ids

    def result(self) -> GenerationResult | ScoreResult:
        seq = self._seq
        if not seq.is_finished:
            raise RuntimeError(f"request {seq.request_id} has not finished")
        if seq.is_score:
            return ScoreResult(seq.request_id, tuple(seq.request.prompt_token_ids), tuple(seq.request.continuation_token_ids),
                               list(seq.token_logprobs), seq.finish_reason, seq.num_cached_prompt_tokens,
                               dict(seq.cache_tier_hits))
        logprobs = list(seq.output_logprobs) if seq.output_logprobs is not None else None
        return GenerationResult(seq.request_id, tuple(seq.request.prompt_token_ids), seq.output_token_ids,
                                seq.detokenizer.text, seq.finish_reason, seq.num_cached_prompt_tokens, logprobs,
                                dict(seq.cache_tier_hits))


class Engine:
    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, config: EngineConfig = EngineConfig(),
                 predictor: Callable[[GenerationRequest], float] | None = None, kernels: KernelSet | None = None,
                 draft_model: LlamaModel | None = None, kv_tiers: KVTierSpec | None = None):
        """predictor: expected output tokens of a request, for scheduling='spf' (default: its max_tokens).
        kernels: where config.attention_kernel = 'tvm' finds its kernels (default: the CPU's set).
        draft_model: a smaller model of the same tokenizer, for speculative = 'draft'.
        kv_tiers: keep KV blocks beyond the pool (host RAM, and a disk tier under kv_tiers.home that later
        processes reuse); with the prefix cache only."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.predictor = predictor or (lambda request: request.sampling.max_tokens)
        bs = config.kv_block_size
        kv_dtype = config.resolved_kv_cache_dtype(model.weight_format)
        block_bytes = PagedKVCache.bytes_per_block(model.config, bs, KV_CACHE_DTYPES[kv_dtype])
        num_blocks = config.resolved_kv_cache_memory() // block_bytes
        if num_blocks < 1:
            raise KVCacheTooSmallError(f"kv_cache_memory {config.resolved_kv_cache_memory()} bytes holds no "
                                       f"{bs}-token KV block of this model")
        if config.attention_kernel not in ("tvm", "torch"):
            raise ValueError(f"attention_kernel must be 'tvm' or 'torch', got {config.attention_kernel!r}")
        attention = (kernels or kernel_set("cpu")).attention() if config.attention_kernel == "tvm" else None
        self.runner = ModelRunner(model, num_blocks, bs, kv_dtype, attention)
        if kv_dtype == "int8":
            self.runner.cache.calibrate_keys(model, tokenizer.encode(KEY_CALIBRATION_TEXT)[:256])
        self.tiers = kv_tiers.store(self.runner.cache) if kv_tiers is not None and config.prefix_cache else None
        self.kv = KVCacheManager(num_blocks, bs, config.prefix_cache, self.tiers)
        self.scheduler = Scheduler(config, self.kv)
        self.draft_model, self._attention_kernels = draft_model, attention
        self._draft_name = config.draft_model  # the name the draft model was built under
        self._live: dict[int, Sequence] = {}
        self.proposer: PromptLookup | None = None
        self.reconfigure(config)
        self._by_request_id: dict[str, Sequence] = {}
        self._seq_ids = itertools.count()
        self.grammars = Grammars(tokenizer, model.config.vocab_size)
        self._masks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlm-masks")  # llguidance drops the GIL
        self._counters = dict(num_steps=0, num_batched_tokens=0, num_computed_prompt_tokens=0,
                              num_recomputed_tokens=0, num_generated_tokens=0, num_scored_tokens=0, num_block_copies=0,
                              num_speculative_steps=0, num_draft_tokens=0, num_accepted_draft_tokens=0)

    def reconfigure(self, config: EngineConfig) -> None:
        """Take config's scheduling and speculation knobs (RECONFIGURABLE; the rest must be this engine's): a plan
        that differs from the last one only there reuses the engine, its KV pool and its prefix cache."""
        unchanged = {name: getattr(self.config, name) for name in RECONFIGURABLE}
        if replace(config, **unchanged) != self.config:
            raise ValueError(f"reconfigure changes only {', '.join(RECONFIGURABLE)}")
        if config.speculative == "draft" and (self.draft_model is None or config.draft_model != self._draft_name):
            raise ValueError(f"speculative = 'draft' with draft_model {config.draft_model!r} needs the engine built "
                             "with that draft model")
        same_proposer = self.proposer is not None and config.speculative == self.config.speculative
        self.config = self.scheduler.config = config
        if self.tiers is not None:
            self.tiers.load_tiers = config.kv_restore_tiers
        if not same_proposer:  # a draft model's proposer holds its KV pool: kept while the method stays
            self.proposer = None
            if config.speculative == "ngram":
                self.proposer = PromptLookup()
            elif config.speculative == "draft":
                self.proposer = DraftModelProposer(self.draft_model, self.kv.pool.num_blocks, self.kv.block_size,
                                                   self._attention_kernels)

    # --- requests -----------------------------------------------------------------------------

    def request_from_text(self, text: str, sampling: SamplingParams = SamplingParams(), chat: bool = True,
                          priority: int = 0, request_id: str | None = None) -> GenerationRequest:
        ids = self.tokenizer.encode_chat(text) if chat else self.tokenizer.encode(text)
        return GenerationRequest(tuple(ids), sampling, priority, request_id)

    def submit(self, request: GenerationRequest | ScoreRequest,
               on_token: Callable[[TokenEvent], None] | None = None) -> RequestHandle:
        request_id = request.request_id or uuid.uuid4().hex
        if request_id in self._by_request_id:
            raise ValueError(f"request id {request_id!r} is already running")
        context = self.model.config.max_position_embeddings
        if isinstance(request, ScoreRequest):
            total = len(request.prompt_token_ids) + len(request.continuation_token_ids)
            check_context(len(request.prompt_token_ids), 0, context)
            check_context(total - 1, 0, context)  # the last continuation token is never an input
            seq = Sequence(next(self._seq_ids), request_id, request)
        else:
            params = request.sampling
            if params.beam_width > 1:
                raise ValueError("beam search runs over the engine (runtime.beam_search), not inside one request")
            check_context(len(request.prompt_token_ids), params.max_tokens, context)
            max_new = min(params.max_tokens, context - len(request.prompt_token_ids))
            total = len(request.prompt_token_ids) + max_new
            seq = Sequence(next(self._seq_ids), request_id, request, max_new, float(self.predictor(request)),
                           IncrementalDetokenizer(self.tokenizer), make_generator(params), on_token)
            if params.structured is not None:  # an invalid constraint fails here, before anything runs
                seq.constraint = self.grammars.matcher(params.structured)
        # One block of slack: a fully cached prefix is copied (copy-on-write) before its last token is recomputed.
        if self.kv.blocks_for(total) + 1 > self.kv.pool.num_blocks:
            raise KVCacheTooSmallError(
                f"request {request_id} needs {total} tokens of KV ({self.kv.blocks_for(total) + 1} blocks of "
                f"{self.kv.block_size}), but kv_cache_memory holds only {self.kv.pool.num_blocks} blocks")
        if not seq.is_score and seq.max_new_tokens == 0:
            seq.status, seq.finish_reason = SequenceStatus.FINISHED, "length"
            return RequestHandle(seq)
        self._live[seq.seq_id] = seq
        self._by_request_id[request_id] = seq
        self.kv.prefetch(seq.token_ids, seq.max_cached_tokens)  # tier reads overlap the steps until admission
        self.scheduler.add(seq)
        return RequestHandle(seq)

    def cancel(self, request_id: str) -> bool:
        """Stop a request and free its blocks; False when it is unknown or already finished."""
        seq = self._by_request_id.get(request_id)
        if seq is None:
            return False
        self._finish(seq, "cancelled")
        return True

    def export_prefix(self, token_ids) -> list[bytes]:
        """The KV of token_ids' longest cached prefix, one bytes object per whole block (prefill/decode
        disaggregation: a prefill engine hands a prompt's KV to a decode engine, which `adopt_prefix`es it)."""
        return self.kv.export_prefix(token_ids, self.runner.cache.read_block)

    def adopt_prefix(self, token_ids, blocks: list[bytes]) -> int:
        """Take KV another engine of the same model and KV layout computed for token_ids' first whole blocks into
        the prefix cache; a request over token_ids then computes only what follows. Returns the tokens cached."""
        if any(len(raw) != self.runner.cache.block_bytes for raw in blocks):
            raise ValueError("KV blocks of another layout (model, KV dtype or block size) cannot be adopted")
        return self.kv.adopt_prefix(token_ids, blocks, self.runner.cache.write_block)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work

    # --- the loop -----------------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """One iteration: draft (when speculative), schedule a batch, run the model on it, apply its tokens."""
        if self.proposer is not None:
            self._propose()
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        # the next-token masks of constrained rows depend only on the tokens so far: computed beside the forward
        masks = self._masks.submit(self._constraint_masks, batch) if self._any_constrained(batch) else None
        logits = self.runner.run(batch)  # [batch.num_logits, V], computed on demand
        return self._postprocess(batch, logits, masks.result() if masks is not None else {})

    def _propose(self) -> None:
        """Drafts for the running sequences that decode next, unless more than speculative_max_batch do: never
        past max_tokens or the context (the target's own token follows the drafts)."""
        context = self.model.config.max_position_embeddings
        decoding = sum(seq.num_remaining_tokens == 1 for seq in self.scheduler.running)
        wanted, shadowed = [], []
        for seq in self.scheduler.running:
            seq.draft_token_ids = []
            if decoding <= self.config.speculative_max_batch and seq.num_remaining_tokens == 1 and speculable(seq):
                k = min(self.config.num_speculative_tokens, seq.max_new_tokens - seq.num_output_tokens - 1,
                        context - len(seq.token_ids) - 1)
                if k <= 0:
                    continue
                if self.proposer.proposes_free and not seq.acceptance.settle(seq.token_ids):
                    continue  # its shadow drafts match so far: scored when more tokens follow
                if still_pays(seq, self.config.speculative_min_acceptance):
                    wanted.append((seq, k))
                elif self.proposer.proposes_free:
                    shadowed.append((seq, k))  # proposed, not verified: scored against the tokens that follow
        if wanted or shadowed:
            drafts = self.proposer.propose_all([(seq.seq_id, seq.token_ids, k) for seq, k in wanted + shadowed])
            for seq, _ in wanted:
                seq.draft_token_ids = drafts.get(seq.seq_id, [])
            for seq, _ in shadowed:
                seq.acceptance.shadow(len(seq.token_ids), drafts.get(seq.seq_id, []))

    def _any_constrained(self, batch: ScheduledBatch) -> bool:
        return any(self._live[r.seq_id].constraint is not None for r in batch.rows if r.logit_offsets)

    def _constraint_masks(self, batch: ScheduledBatch) -> dict[int, torch.Tensor]:
        """seq_id -> allowed next tokens [V] bool, for the constrained rows that sample this step."""
        vocab = self.model.config.vocab_size
        return {r.seq_id: allowed_tokens(self._live[r.seq_id].constraint, vocab) for r in batch.rows
                if r.logit_offsets and self._live[r.seq_id].constraint is not None}

    def generate(self, requests: list[GenerationRequest | ScoreRequest],
                 on_progress: Callable[[int, int], None] | None = None) -> list[GenerationResult | ScoreResult]:
        """Run the requests to completion in one continuous batch; results in request order."""
        handles = []
        try:
            for r in requests:
                handles.append(self.submit(r))
        except Exception:
            for h in handles:  # all or nothing: no orphan requests left queued
                self.cancel(h.request_id)
            raise
        num_done = sum(h.finished for h in handles)
        try:
            while num_done < len(handles):
                steps = self._counters["num_steps"]
                self.step()
                if self._counters["num_steps"] == steps:
                    raise RuntimeError("the scheduler scheduled nothing while requests are unfinished")
                done = sum(h.finished for h in handles)
                if on_progress and done != num_done:
                    on_progress(done, len(handles))
                num_done = done
        except BaseException:
            # a failed step (or an interrupt) ends this call's requests: left live, they would run, and fail
            # again, inside the engine's next call
            for h in handles:
                if not h.finished:
                    with contextlib.suppress(Exception):  # the step's own error is the one to see
                        self.cancel(h.request_id)
            raise
        return [h.result() for h in handles]

    def _postprocess(self, batch: ScheduledBatch, logits: StepLogits,
                     masks: dict[int, torch.Tensor] | None = None) -> list[TokenEvent]:
        to_sample, to_score, to_verify, cursor = [], [], [], 0
        for row in batch.rows:
            seq = self._live[row.seq_id]
            if row.num_draft_tokens:
                to_verify.append((seq, row, cursor))
            elif row.logit_offsets:
                (to_score if seq.is_score else to_sample).append((seq, row, cursor))
            cursor += len(row.logit_offsets)
        # the lm_head runs here (StepLogits computes on demand): before the scheduler moves, so a failure in it
        # leaves the step undone, as a failure in the forward pass does
        full = logits.all() if to_score or to_verify else None
        seqs = [seq for seq, _, _ in to_sample]
        tokens, logprobs = self._sample(seqs, [c for _, _, c in to_sample], logits, masks or {}) if seqs else ([], [])
        self.scheduler.advance(batch, self._live)
        self._count(batch)
        if to_score:
            self._apply_scores(to_score, full)
        events = []
        for seq, row, cursor in to_verify:
            events += self._verify(seq, row, full[cursor : cursor + len(row.logit_offsets)])
        if to_sample:
            for seq, token, logprob in zip(seqs, tokens, logprobs):
                if seq.is_finished:  # cancelled by a callback earlier in this loop
                    continue
                if logprob is not None:
                    seq.output_logprobs.append(logprob)
                event = TokenEvent(seq.request_id, token, seq.append_token(token, self.tokenizer.eos_token_ids),
                                   seq.finish_reason, logprob)
                self._counters["num_generated_tokens"] += 1
                if seq.finish_reason:
                    self._finish(seq, seq.finish_reason)
                if seq.on_token:
                    seq.on_token(event)
                events.append(event)
        return events

    def _sample(self, seqs: list[Sequence], rows: list[int], logits: StepLogits,
                masks: dict[int, torch.Tensor]) -> tuple[list[int], list[TokenLogprobs | None]]:
        """Each sequence's next token (and its logprobs where asked) from its logit row. Rows that take only the
        argmax (SamplingParams.argmax_only) get it from StepLogits.greedy, without every logit where the lm_head
        can; the others sample from their full, processed logits."""
        eos = self.tokenizer.eos_token_ids
        plain = [i for i, s in enumerate(seqs)
                 if s.request.sampling.argmax_only and s.constraint is None and s.output_logprobs is None]
        tokens: list[int] = [0] * len(seqs)
        logprobs: list[TokenLogprobs | None] = [None] * len(seqs)
        rest = sorted(set(range(len(seqs))) - set(plain))
        if rest:  # first: once every logit is computed, the plain rows' argmax is read from them
            full = logits.all()
            picked = full if len(rest) == full.shape[0] else full[[rows[i] for i in rest]]  # [B, V]
            others = [seqs[i] for i in rest]
            processed = process(picked, others, masks)  # penalties, bias, constraints: on a copy (logprobs stay)
            sampled = sample(processed, [s.request.sampling for s in others], [s.generator for s in others], eos)
            for i, token, logprob in zip(rest, sampled, self._logprobs(picked, others, sampled)):
                tokens[i], logprobs[i] = token, logprob
        if plain:
            found = logits.greedy([rows[i] for i in plain],
                                  [eos if seqs[i].request.sampling.ignore_eos else () for i in plain])
            for i, token in zip(plain, found):
                tokens[i] = token
        return tokens, logprobs

    def _verify(self, seq: Sequence, row, rows: torch.Tensor) -> list[TokenEvent]:
        """rows [1 + drafts, V]: keep the accepted drafts and the target's next token (runtime/speculation.py)."""
        if seq.is_finished:  # cancelled by a callback earlier in this step
            return []
        params = seq.request.sampling
        drafts = list(row.token_ids[1:])
        tokens = verify(rows, drafts, params, seq.generator, self.tokenizer.eos_token_ids)
        self._counters["num_speculative_steps"] += 1
        self._counters["num_draft_tokens"] += len(drafts)
        self._counters["num_accepted_draft_tokens"] += len(tokens) - 1
        seq.acceptance.add(len(drafts), len(tokens) - 1)
        logprobs = ([None] * len(tokens) if seq.output_logprobs is None else
                    token_logprobs(rows[: len(tokens)], tokens, [params.logprobs] * len(tokens)))
        events = []
        for token, logprob in zip(tokens, logprobs):
            if logprob is not None:
                seq.output_logprobs.append(logprob)
            events.append(TokenEvent(seq.request_id, token, seq.append_token(token, self.tokenizer.eos_token_ids),
                                     seq.finish_reason, logprob))
            self._counters["num_generated_tokens"] += 1
            if seq.finish_reason:
                break
        self.scheduler.accept_drafts(seq, min(len(events), len(tokens) - 1))
        if seq.finish_reason:
            self._finish(seq, seq.finish_reason)
        for event in events:
            if seq.on_token:
                seq.on_token(event)
        return events

    @staticmethod
    def _logprobs(rows: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> list[TokenLogprobs | None]:
        """rows [B, V] raw logits: only the rows whose request asked pay for a log_softmax."""
        asked = [i for i, seq in enumerate(seqs) if seq.output_logprobs is not None]
        out: list[TokenLogprobs | None] = [None] * len(seqs)
        if asked:
            found = token_logprobs(rows[asked], [tokens[i] for i in asked],
                                   [seqs[i].request.sampling.logprobs for i in asked])  # rows[asked]: [A, V]
            for i, logprob in zip(asked, found):
                out[i] = logprob
        return out

    def _apply_scores(self, to_score, logits: torch.Tensor) -> None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
        for seq, row, cursor in to_score:
            targets = [seq.token_ids[row.start + off + 1] for off in row.logit_offsets]
            picked = logprobs[torch.arange(cursor, cursor + len(targets)), targets]  # [k]
            seq.append_logprobs(picked.tolist())
            self._counters["num_scored_tokens"] += len(targets)
            if seq.finish_reason:
                self._finish(seq, seq.finish_reason)

    def _count(self, batch: ScheduledBatch) -> None:
        c = self._counters
        c["num_steps"] += 1
        c["num_batched_tokens"] += batch.num_tokens
        c["num_block_copies"] += len(batch.block_copies)
        for row in batch.rows:
            seq = self._live[row.seq_id]
            if seq.num_preemptions:
                c["num_recomputed_tokens"] += row.num_tokens
                continue
            c["num_computed_prompt_tokens"] += max(0, min(row.context_len, seq.num_prompt_tokens) - row.start)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq, reason)
        if self.proposer is not None:
            self.proposer.forget(seq.seq_id)
        self._live.pop(seq.seq_id, None)
        self._by_request_id.pop(seq.request_id, None)

    @property
    def load(self) -> EngineLoad:
        kv = self.kv
        cached = kv.prefix_cache.num_evictable_blocks if kv.prefix_cache is not None else 0
        return EngineLoad(len(self.scheduler.running), len(self.scheduler.waiting), kv.pool.num_used, cached,
                          kv.pool.num_blocks)

    @property
    def stats(self) -> EngineStats:
        return EngineStats(
            **self._counters,
            num_prompt_tokens=self.scheduler.num_prompt_tokens,
            num_cached_prompt_tokens=self.scheduler.num_cached_prompt_tokens,
            preemptions=self.scheduler.num_preemptions,
            peak_blocks=self.kv.pool.peak_used,
            num_blocks=self.kv.pool.num_blocks,
            block_size=self.kv.block_size,
            kv_cache_bytes=self.runner.cache.nbytes,
        )
